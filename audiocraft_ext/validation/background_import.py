"""Importing audiocraft's models (several seconds of Python) on a thread while the release is
written, and waiting for it when a check needs it."""

from __future__ import annotations

import logging
import sys
import threading
import time

logger = logging.getLogger(__name__)
JOIN_SECONDS = 1.0


def import_audiocraft_meanwhile() -> None:
    """Start importing audiocraft's models (several seconds of Python) on a thread, so that it
    overlaps the writing of the release, which mostly waits on the kernel and the hasher
    thread. The checks import it again: they wait for this import, or redo a failed one and
    report its error themselves."""
    global _importing
    if "audiocraft.models" not in sys.modules:
        logger.info("importing audiocraft while the release is written")
        _importing = threading.Thread(target=_import_models, name="import-audiocraft")
        _importing.start()


_importing: threading.Thread | None = None


def wait_for_audiocraft() -> None:
    """Import audiocraft's models, saying so twice when the background import is still
    running (once when the wait starts, once when it ends, with its time): a
    multi-second import is one step of the log, not a line every few seconds."""
    if _importing is not None and _importing.is_alive():
        logger.info("waiting for audiocraft's import to finish")
        started = time.monotonic()
        while _importing.is_alive():  # a timed join: SIGTERM's handler runs between two
            _importing.join(JOIN_SECONDS)
        logger.info("audiocraft imported (waited %.1f s)", time.monotonic() - started)
    elif "audiocraft.models" not in sys.modules:
        logger.info("importing audiocraft")
    import audiocraft.models  # noqa: F401  (the import is the point)


def _import_models() -> None:
    try:
        import audiocraft.models  # noqa: F401  (imported for its side effect: the import)
    except Exception:  # noqa: BLE001  (the checks import it again and report the error)
        pass
