"""Publishing a release folder: staged, locked, atomic, and never at the cost of user data.

A release is assembled in a hidden staging folder beside its destination and renamed into
place only once complete, under an exclusive lock, so a failed or killed run leaves nothing
half-written. What may be replaced is narrow on purpose: ``overwrite`` replaces only a folder
that is recognisably a previous release (release files and manifest, nothing else), and never
the source's XP folder or Dora dir, the current folder or one above it, a file or a symbolic
link. Lock, staging and set-aside names are matched exactly (no glob), created without
following symbolic links, and recovery touches only folders that hold release files alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError, setting
from .release_format import MANIFEST_FILE, RELEASE_DIRS, RELEASE_FILES, fsync_dir

logger = logging.getLogger(__name__)


def _foreign_entry(folder: Path) -> str | None:
    """The first entry of ``folder`` that a release does not hold (a release file, or one of
    its folders holding its files only), or None. Links are never release entries."""
    for entry in os.scandir(folder):
        if entry.name in RELEASE_DIRS and entry.is_dir(follow_symlinks=False):
            for inner in os.scandir(entry.path):
                if inner.name not in RELEASE_DIRS[entry.name] \
                        or not inner.is_file(follow_symlinks=False):
                    return f"{entry.name}/{inner.name}"
        elif entry.name not in RELEASE_FILES or not entry.is_file(follow_symlinks=False):
            return entry.name
    return None


def release_problem(folder: Path) -> str | None:
    """Why ``folder`` is not recognisably a release this tool wrote, or None when it is."""
    try:
        if not any(os.scandir(folder)):
            return "it is empty"
        foreign = _foreign_entry(folder)
    except OSError as exc:
        return f"it cannot be listed: {exc.strerror or exc}"
    if foreign is not None:
        return f"it holds {foreign!r}, which is not a release file"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return f"it has no readable {MANIFEST_FILE}"
    if not isinstance(manifest, dict) or "files" not in manifest:
        return f"its {MANIFEST_FILE} is not a release manifest"
    return None


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``dest``; removed when the block ends."""
    lock_path = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ExportError(f"{lock_path} is a symbolic link; a lock file is never "
                                  "followed: remove it") from exc
            raise ExportError(f"cannot write into {dest.parent}: {exc.strerror or exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ExportError(f"{lock_path} is not a lock file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportError(f"another export is writing {dest} right now") from None
            # The run that held the lock removes the file before releasing it: a lock taken on
            # a file no longer at lock_path protects nothing. Take the one there now.
            try:
                current = os.path.samestat(os.fstat(fd), os.lstat(lock_path))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)  # while still holding it: see above
        except OSError:
            pass
        os.close(fd)


def _check_destination(dest: Path, overwrite: bool, protected: Sequence[Path],
                       holding: str) -> None:
    """Refuse a destination whose replacement could lose data; one line saying why."""
    if dest.is_symlink():
        raise ExportError(f"{dest} is a symbolic link; a release is never written through one: "
                          f"choose another {setting('output.dir')}")
    if not os.path.lexists(dest):
        return
    if not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder; choose another "
                          f"{setting('output.dir')}")
    real = dest.resolve()
    for folder in protected:
        folder = folder.resolve()
        relation = ("is" if real == folder else "contains" if folder.is_relative_to(real)
                    else "lies inside" if real.is_relative_to(folder) else None)
        if relation:
            raise ExportError(f"{dest} {relation} {folder}, which holds {holding}; a release "
                              f"is never written there: choose another {setting('output.dir')}")
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(real):
        raise ExportError(f"{dest} is the current folder or one above it; it is never "
                          f"replaced: choose another {setting('output.dir')}")
    problem = release_problem(dest)
    if problem is not None:
        raise ExportError(f"{dest} exists and is not a release folder ({problem}); it is never "
                          f"replaced: choose another {setting('output.dir')}")
    if not overwrite:
        raise ExportError(f"{dest} already exists; choose another {setting('output.dir')} or "
                          f"set {setting('output.overwrite', True)} to replace it once the new "
                          "export validated")


# A stop that a signal asked for. The app's handler records it, then raises it; but Python
# ignores an exception raised where it cannot propagate (a weakref callback or __del__ that
# happens to run when the signal arrives: "Exception ignored in ..."), and the export would
# then go on and publish. The publication checks the record too.
_stop_requested: list[BaseException] = []


def request_stop(reason: BaseException) -> None:
    """Record that the run must stop: no release is published until :func:`clear_stop`;
    the one about to be is refused with ``reason``."""
    _stop_requested[:] = [reason]


def clear_stop() -> None:
    _stop_requested.clear()


@contextmanager
def staged_release(dest: str | Path, overwrite: bool = False,
                   protected: Sequence[Path] = (),
                   holding: str = "the checkpoint being exported") -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes ``dest``, else it is removed.

    Holds an exclusive lock on ``dest`` throughout, so two runs cannot interleave. With
    ``overwrite``, an existing release is replaced only after the new one is complete.
    ``protected`` paths (the source's XP folder and Dora dir; weights and their base) are
    never replaced; messages say they hold ``holding``.
    """
    dest = Path(os.path.abspath(os.path.expanduser(dest)))  # ".." resolved, links kept
    if dest.parent == dest:
        raise ExportError(f"{dest} is the root folder; choose another "
                          f"{setting('output.dir')}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {dest.parent}: {exc.strerror or exc}") from exc
    if not os.access(dest.parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write into {dest.parent}: permission denied")
    with _locked(dest):
        _recover_interrupted(dest)
        _check_destination(dest, overwrite, protected, holding)
        staging = _aside(dest, "staging")
        try:
            staging.mkdir()
        except OSError as exc:
            raise ExportError(f"cannot create {staging}: {exc.strerror or exc}") from exc
        try:
            yield staging
            if _stop_requested:  # a stop whose raise was swallowed on its way
                raise _stop_requested[0]
            fsync_dir(staging)
            if os.path.lexists(dest):
                replaced = _aside(dest, "replaced")
                dest.rename(replaced)
                staging.rename(dest)
                _remove_release(replaced)
            else:
                staging.rename(dest)
            fsync_dir(dest.parent)
        finally:
            if os.path.lexists(staging):
                _remove_release(staging)


def _aside(dest: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>`` beside ``dest``, which must not exist yet."""
    path = dest.parent / f".{dest.name}.{kind}-{os.getpid()}"
    if os.path.lexists(path):
        raise ExportError(f"{path} is in the way (not left by an export of this tool); "
                          "remove it")
    return path


def _leftovers(dest: Path, kind: str) -> Iterator[Path]:
    """Folders ``.<name>.<kind>-<pid>`` beside ``dest``: exact names, no pattern matching."""
    prefix = f".{dest.name}.{kind}-"
    for entry in os.scandir(dest.parent):
        if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit() \
                and entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def _is_release_content(folder: Path) -> bool:
    """A staging or set-aside folder holds release files only (a staging folder may lack
    the manifest)."""
    return _foreign_entry(folder) is None


def _remove_release(folder: Path) -> None:
    """Remove a folder of ours: its release files and its folders' files, then the folders;
    anything else stays."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.name in RELEASE_FILES and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
        elif entry.name in RELEASE_DIRS and entry.is_dir(follow_symlinks=False):
            for inner in os.scandir(entry.path):
                if inner.name in RELEASE_DIRS[entry.name] \
                        and inner.is_file(follow_symlinks=False):
                    os.unlink(inner.path)
            try:
                os.rmdir(entry.path)
            except OSError:
                pass  # reported below: the release folder cannot be removed either
    try:
        folder.rmdir()
    except OSError:
        logger.warning("left %s in place: it holds files that are not release files", folder)


def _recover_interrupted(dest: Path) -> None:
    """Under the lock, clean up after runs that were killed while publishing ``dest``."""
    removed = 0
    for stale in _leftovers(dest, "staging"):
        if _is_release_content(stale):
            _remove_release(stale)
            removed += 1
    if removed:
        logger.info("removed %d staging folder(s) of %s left by interrupted exports",
                    removed, dest)
    # A run killed between its two renames left the previous release aside: put it back.
    for replaced in _leftovers(dest, "replaced"):
        if release_problem(replaced) is not None:
            continue
        if os.path.lexists(dest):
            _remove_release(replaced)
        else:
            logger.warning("restoring %s, set aside by an interrupted overwrite", dest)
            replaced.rename(dest)
