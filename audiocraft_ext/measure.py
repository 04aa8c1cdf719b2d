"""Wall time and peak memory of the phases of an export."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux >= 4.0), so that a phase's peak is its own."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def phase(record: dict) -> Iterator[None]:
    """Record ``seconds`` and ``peak_rss_bytes`` of the enclosed block into ``record``.

    Where the peak cannot be reset, ``peak_rss_bytes`` is the process's peak so far and
    ``peak_rss_scope`` says so.
    """
    own = _reset_peak_rss()
    start = time.perf_counter()
    try:
        yield
    finally:
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["peak_rss_bytes"] = _peak_rss_bytes()
        record["peak_rss_scope"] = "phase" if own else "process"
