"""The command line: ``audiocraft-export``, ``python -m audiocraft_ext``, ``python export_app.py``.

The Hydra configs are the package's ``conf/`` folder (in a checkout, the top-level ``conf/``
it links to), so an installed package finds them from any working directory.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig

from .. import __version__
from ..config import CONF_DIR
from ..errors import ExportError
from .config_store import register_configs
from .guidance import explain, hydra_words

register_configs()
# Emitted by audiocraft's EnCodec on every build; says nothing about the export.
warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
logger = logging.getLogger("export_app")

FULL_ERROR = "HYDRA_FULL_ERROR"
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The user's own HYDRA_FULL_ERROR while main() sets it for Hydra; the environment carries it
# to the jobs of a launcher's worker processes too.
USERS_FULL_ERROR = "AUDIOCRAFT_EXT_USERS_HYDRA_FULL_ERROR"
# Hydra's default job_logging format, which the job's own error lines have.
LINE_FORMAT = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


# What the AudioCraft environment must hold (not pip dependencies: see requirements/runtime.txt).
REQUIRED = {"torch": (2, 1), "audiocraft": (1, 0)}


def _check_environment() -> None:
    for name, minimum in REQUIRED.items():
        try:
            found = version(name)
        except PackageNotFoundError as exc:
            raise ExportError(f"{name} is not installed in this environment: install "
                              "audiocraft-ext into your AudioCraft environment (see README)"
                              ) from exc
        numbers = tuple(int(part) for part in re.findall(r"\d+", found)[:2])
        if numbers < minimum:
            raise ExportError(f"{name} {found} is installed; audiocraft-ext needs "
                              f"{name} >= {'.'.join(map(str, minimum))}")


def main() -> NoReturn:
    """The command: Hydra's app, with the mistakes Hydra finds while composing the config
    explained in one line (HYDRA_FULL_ERROR=1 keeps Hydra's own report). Ends the process."""
    code: int | str | None = 0
    try:
        _main()
    except SystemExit as exc:
        code = exc.code
    _exit(code)


def _main() -> None:
    if os.environ.get(FULL_ERROR) == "1":
        export_app()
        return
    # Hydra re-raises composition errors instead of printing them when HYDRA_FULL_ERROR=1;
    # the job gives the user's own setting back as soon as it starts (_give_back_full_error).
    os.environ[USERS_FULL_ERROR] = os.environ.get(FULL_ERROR, "")
    os.environ[FULL_ERROR] = "1"
    try:
        export_app()
    except HydraException as exc:
        _report(explain(exc, str(CONF_DIR)))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001  (before the job: what Hydra reports in one line)
        # e.g. an interpolation that cannot resolve in --cfg job --resolve, a damaged YAML
        _report(hydra_words(exc))
        sys.exit(1)
    finally:
        _give_back_full_error()


def _exit(code: int | str | None) -> NoReturn:
    """Exit as the interpreter does, up to its teardown: join the other threads and run what
    they registered (a launcher's worker pool), run the atexit handlers (logging's flush
    among them), flush stdout and stderr; then end the process without tearing the
    interpreter down, which takes ~2 s once torch and audiocraft are imported and frees
    nothing the system would not. Every release file was fsync'ed before it was published."""
    # CPython's own first steps of Py_FinalizeEx, in its order (private, stable in CPython 3)
    threading._shutdown()  # type: ignore[attr-defined]  # private: not in typeshed
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python does
        sys.stderr.write(f"{code}\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code or 0)


def _give_back_full_error() -> None:
    """Restore the user's HYDRA_FULL_ERROR, if main() set it (once composition is done)."""
    users = os.environ.pop(USERS_FULL_ERROR, None)
    if users is None:
        return
    if users:
        os.environ[FULL_ERROR] = users
    else:
        os.environ.pop(FULL_ERROR, None)


def _report(message: str) -> None:
    """One error line as the job's own are written (Hydra has not set up logging yet)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), None)
    sys.stderr.write(LINE_FORMAT.format(record) + "\n")


class Interrupted(BaseException):
    """SIGTERM or SIGINT during a job. A BaseException, so that a multirun's job does not
    record it as one failed export and go on: the whole run stops, as the signal asked."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: nothing was published "
                         "(the staging folder and the lock are removed; an existing release "
                         "is left as it was)")


@contextmanager
def _signals_end_the_run() -> Iterator[None]:
    """Within the block, SIGTERM (what a cluster scheduler sends) and SIGINT (Ctrl-C) raise
    :class:`Interrupted` in the main thread, so that the run ends as cleanly as on an error:
    every ``finally`` runs (staging folder and lock removed). Later ones are ignored while
    that cleanup runs; SIGKILL cannot be caught, and the next run recovers from it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ..writing.publish import clear_stop, request_stop  # after torch's import, like the job

    def stop(signum: int, frame: object) -> None:
        for name in STOPPING_SIGNALS:
            signal.signal(name, signal.SIG_IGN)
        interrupted = Interrupted(signum)
        request_stop(interrupted)  # publication refuses even if this raise is swallowed
        raise interrupted

    clear_stop()
    previous = {name: signal.signal(name, stop) for name in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
        clear_stop()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def export_app(cfg: DictConfig) -> str | None:
    """Export (or inspect) the checkpoint the composed config designates; print the release."""
    _give_back_full_error()  # from here on, Hydra and the app see the user's own setting
    # a first line before the seconds of importing torch and the exporter
    logger.info("audiocraft-export %s: mode=%s; importing torch", __version__, cfg.mode.value)
    try:
        _check_environment()
        from .job import run_job  # imports torch: kept out of --help and --cfg

        with _signals_end_the_run():
            result = run_job(cfg)
    except ExportError as exc:
        # One line by default; HYDRA_FULL_ERROR=1 (as for Hydra's own errors) shows the chain.
        logger.error("%s", exc, exc_info=os.environ.get(FULL_ERROR) == "1")
        sys.exit(1)
    except Interrupted as exc:
        logger.error("%s", exc)
        sys.exit(128 + exc.signum)
    if result is None:  # mode=inspect or list, or a failed job of a multirun (in its summary)
        return None
    print(result.release_dir)
    return str(result.release_dir)
