"""Wall time and memory of the phases of an export.

The process's peak RSS is read, never reset: resetting the kernel's counter per phase would
hide an earlier peak from the manifest and from any tool measuring the whole process
(``/usr/bin/time``, a scheduler's accounting). A phase's own peak is sampled on a thread.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SAMPLE_SECONDS = 0.02
_highest = 0  # the highest RSS any phase saw, and the kernel's peak when it ended


def process_peak_rss_bytes() -> int:
    """The whole process's peak RSS so far."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_bytes() -> int | None:
    """The current RSS, or None where /proc is not available."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class _Sampler(threading.Thread):
    """Samples the RSS every SAMPLE_SECONDS and keeps the highest value."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.peak = rss_bytes() or 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_bytes() or 0)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes() or 0)


@contextmanager
def phase(record: dict[str, Any]) -> Iterator[None]:
    """Record into ``record``: ``seconds``; ``peak_rss_bytes``, the process's peak at the end
    of the phase (everything before included); ``phase_peak_rss_bytes``, the highest RSS
    sampled during the phase (a spike shorter than the sampling period can be missed)."""
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        global _highest
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["phase_peak_rss_bytes"] = sampler.stop()
        # The kernel's two counters can lag each other by a few pages: keep both monotonic.
        _highest = max(_highest, record["phase_peak_rss_bytes"], process_peak_rss_bytes())
        record["peak_rss_bytes"] = _highest
