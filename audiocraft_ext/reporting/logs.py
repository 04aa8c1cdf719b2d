"""Showing the library's log from Python, as the command line shows it."""

from __future__ import annotations

import logging

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # the app's (Hydra's) format


def log_to_stderr(level: int | str = logging.INFO) -> logging.Handler:
    """Print audiocraft_ext's log records from ``level`` up on stderr; returns the handler.

    ``export_release`` logs each phase (reading, writing, importing, building, comparing,
    generating) like the command line; a library logs only where its caller asks, so this is
    the one-liner to ask: ``audiocraft_ext.log_to_stderr()``. Calling it again only changes
    the level.
    """
    logger = logging.getLogger("audiocraft_ext")
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, "audiocraft_ext", False):
            return handler
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.audiocraft_ext = True  # type: ignore[attr-defined]  # marks ours among the caller's
    logger.addHandler(handler)
    return handler
