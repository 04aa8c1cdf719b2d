"""Progress of long writes: a bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

QUIET_BELOW_BYTES = 256 << 20  # small exports finish before progress would tell anything
LOG_EVERY_SECONDS = 10.0


def byte_progress(total: int, what: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """Return ``(advance(nbytes), close())`` for writing ``total`` bytes of ``what``."""
    if total < QUIET_BELOW_BYTES:
        return (lambda n: None), (lambda: None)
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr, leave=False)
        return bar.update, bar.close
    done, last = 0, time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= LOG_EVERY_SECONDS:
            last = time.monotonic()
            logger.info("%s: %.1f of %.1f GiB (%d%%)", what, done / 2**30, total / 2**30,
                        100 * done // total)

    return advance, (lambda: None)
