"""Progress of long phases (writing, comparing, generating): a bar on a terminal, a log line
every few seconds otherwise, nothing for work too small to need it."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

QUIET_BELOW_BYTES = 256 << 20  # small exports finish before progress would tell anything
LOG_EVERY_SECONDS = 2.0  # no silent gap longer than this in a log


def byte_progress(total: int, what: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """Return ``(advance(nbytes), close())`` for writing or reading ``total`` bytes of
    ``what``; silent below :data:`QUIET_BELOW_BYTES`."""
    if total < QUIET_BELOW_BYTES:
        return (lambda n: None), (lambda: None)
    return _reporter(total, what, "B", lambda done: f"{done / 2**30:.1f} of "
                     f"{total / 2**30:.1f} GiB")


def step_progress(what: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """Return ``(update(done, total), close())`` for work counted in steps whose total is
    known once it starts (audiocraft's generation callback)."""
    state: dict[str, tuple[Callable[[int], None], Callable[[], None]]] = {}
    done_so_far = 0

    def update(done: int, total: int) -> None:
        nonlocal done_so_far
        if "bar" not in state:
            state["bar"] = _reporter(total, what, "step",
                                     lambda n: f"{n} of {total} steps")
        state["bar"][0](done - done_so_far)
        done_so_far = done

    def close() -> None:
        if "bar" in state:
            state["bar"][1]()

    return update, close


def _reporter(total: int, what: str, unit: str, amount: Callable[[int], str],
              ) -> tuple[Callable[[int], None], Callable[[], None]]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        scaled = unit == "B"
        bar = tqdm(total=total, desc=what, unit=unit, unit_scale=scaled,
                   unit_divisor=1024 if scaled else 1000, file=sys.stderr, leave=False)
        return bar.update, bar.close
    done, last = 0, time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= LOG_EVERY_SECONDS:
            last = time.monotonic()
            logger.info("%s: %s (%d%%)", what, amount(done), 100 * done // max(total, 1))

    return advance, (lambda: None)
