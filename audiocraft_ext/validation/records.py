"""Running validation's checks: each timed, recorded as a typed :class:`Check` of the
report, and audiocraft's own failures turned into one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ExportError, first_line
from ..reporting.manifest import Check, ValidationReport
from .messages import refused_resolver, state_dict_mismatch

logger = logging.getLogger(__name__)


@contextmanager
def timed(check: Check) -> Iterator[None]:
    """Add the seconds the block takes to ``check.compare_seconds``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        check.compare_seconds = round((check.compare_seconds or 0.0)
                                      + time.perf_counter() - start, 3)


class Checks:
    """Runs named checks into ``report``, timing each and recording its outcome."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report

    @contextmanager
    def check(self, name: str) -> Iterator[Check]:
        entry = Check(name)
        self.report.checks.append(entry)
        start = time.perf_counter()
        try:
            yield entry
            entry.ok = True
        except ExportError as exc:
            entry.error = str(exc)
            raise
        except Exception as exc:  # audiocraft's own failures: one line, with the check's name
            entry.error = (state_dict_mismatch(str(exc)) or refused_resolver(exc)
                           or f"{type(exc).__name__}: {first_line(exc)}")
            raise ExportError(f"validation '{name}' failed: {entry.error}") from exc
        finally:
            entry.seconds = round(time.perf_counter() - start, 3)
            compared = (f", comparing {entry.compare_seconds:.2f}s"
                        if entry.compare_seconds is not None else "")
            logger.info("check %-22s %s (%.2fs%s)", name, "ok" if entry.ok else "FAILED",
                        entry.seconds, compared)
