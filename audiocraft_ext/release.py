"""The audiocraft release format, and publishing a release folder atomically.

A release folder holds ``state_dict.bin`` and ``compression_state_dict.bin`` exactly as
``audiocraft.utils.export`` writes them, so ``MusicGen.get_pretrained(folder)`` loads it, plus
our ``export.json`` manifest. It is assembled in a hidden staging folder beside its destination
and renamed into place only once complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from .errors import ExportError
from .stored_tensor import TensorLike
from .torch_writer import save_streaming

logger = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
MANIFEST_FILE = "export.json"


def audiocraft_version() -> str:
    """The installed audiocraft's version, without importing it (a multi-second import)."""
    return version("audiocraft")


def lm_package(state: Mapping[str, TensorLike], cfg: DictConfig) -> dict[str, Any]:
    """What export_lm / export_encodec write: the flat state dict and the config as YAML."""
    return {"best_state": dict(state), "xp.cfg": OmegaConf.to_yaml(cfg),
            "version": audiocraft_version(), "exported": True}


def pointer_package(pretrained: str) -> dict[str, Any]:
    """What export_pretrained_compression_model writes for a released tokenizer."""
    return {"pretrained": pretrained, "exported": True, "version": audiocraft_version()}


def save_package(package: Mapping[str, Any], path: Path,
                 progress: Optional[Callable[[int], None]] = None) -> str:
    """Write a release file as torch.save would, streamed and fsync'ed; return its sha256."""
    return save_streaming(dict(package), path, progress)


def write_json(data: Mapping[str, Any], path: Path) -> None:
    write_text(json.dumps(data, indent=2, default=str) + "\n", path)


def write_text(text: str, path: Path) -> None:
    """Write a small file, fsync'ed like the rest of the release."""
    try:
        with open(path, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    lock_path = dest.parent / f".{dest.name}.lock"
    try:
        lock = open(lock_path, "w")
    except OSError as exc:
        raise ExportError(f"cannot write into {dest.parent}: {exc.strerror or exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ExportError(f"another export is writing {dest} right now") from None
            raise
        yield


@contextmanager
def staged_release(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes ``dest``, else it is removed.

    Holds an exclusive lock on ``dest`` throughout, so two runs cannot interleave. With
    ``overwrite``, an existing release is replaced only after the new one is complete.
    """
    dest = Path(dest).expanduser().absolute()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    if not os.access(dest.parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write into {dest.parent}: permission denied")
    with _locked(dest):
        _recover_interrupted(dest)
        if dest.exists() and not overwrite:
            raise ExportError(f"{dest} already exists; choose another output.dir or set "
                              "output.overwrite=true to replace it once the new export validated")
        staging = dest.parent / f".{dest.name}.staging-{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
            _fsync_dir(staging)
            if dest.exists():
                replaced = dest.parent / f".{dest.name}.replaced-{os.getpid()}"
                dest.rename(replaced)
                staging.rename(dest)
                shutil.rmtree(replaced)
            else:
                staging.rename(dest)
            _fsync_dir(dest.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _recover_interrupted(dest: Path) -> None:
    """Under the lock, clean up after runs that were killed while publishing ``dest``."""
    for stale in dest.parent.glob(f".{dest.name}.staging-*"):
        logger.info("removing %s, left over by an interrupted export", stale)
        shutil.rmtree(stale, ignore_errors=True)
    # A run killed between its two renames left the previous release aside: put it back.
    for replaced in dest.parent.glob(f".{dest.name}.replaced-*"):
        if dest.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            logger.warning("restoring %s, set aside by an interrupted overwrite", dest)
            replaced.rename(dest)
