"""The single place where checkpoints are unpickled.

A checkpoint is a pickle, and a pickle can call any importable function. Instead of torch's
``weights_only`` allow-list (which rejects Dora-composed configs on torch >= 2.6 and cannot be
extended on torch 2.1), checkpoints are read with a restricted ``Unpickler`` whose globals
resolve through :mod:`.allowlist` (each admitted callable checks its arguments), after a scan
of the pickle's opcodes bounds its nesting (the C unpickler hashes a 300,000-deep tuple by
recursion, and dies) and its memo indices (the C unpickler sizes its memo to the largest index
it is given: one opcode asking for slot 2^31 would make it touch gigabytes). Tensors come back
as :class:`StoredTensor` (read on demand).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, first_line, setting
from .allowlist import BadArguments, RefusedGlobal, resolve_global, storage_from_id
from .archive import CheckpointArchive
from .lazy_tensors import StoredStorage, element_size

logger = logging.getLogger(__name__)

# Real checkpoints nest a few dozen levels (configs of configs, optimizer states); Python-level
# code that walks a loaded object (OmegaConf, repr, our own) recurses once per level.
MAX_NESTING = 200
# how torch's legacy format starts: its magic number, pickled
_TORCH_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


class UnsafeCheckpointError(ExportError):
    """The checkpoint references a global outside the allow-list, or calls one with
    arguments no real checkpoint uses."""


class _Unpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a zip checkpoint: globals through the allow-list (everything,
    with ``trust``), storages as references to the archive's records."""

    def __init__(self, data: bytes, archive: CheckpointArchive, trust: bool) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.archive = archive
        self.trust = trust
        self._storages: dict[str, StoredStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return resolve_global(module, name)
        except RefusedGlobal:
            if not self.trust:
                raise
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:  # what the trusted file names is not here
            raise pickle.UnpicklingError(f"{module}.{name}: {first_line(exc)}") from exc

    def persistent_load(self, saved_id: Any) -> StoredStorage:
        return storage_from_id(saved_id, self._storages, self._storage)

    def _storage(self, key: str, dtype: torch.dtype, numel: int) -> StoredStorage:
        size = self.archive.record_size(f"data/{key}")
        nbytes = numel * element_size(dtype)
        if size != nbytes:
            raise BadArguments(f"storage {key!r} of {nbytes} bytes has "
                               + ("no record" if size is None else f"a record of {size} bytes"))
        return StoredStorage(self.archive, key, dtype, numel)


def check_opcodes(data: bytes, limit: int = MAX_NESTING) -> None:
    """Raise ``pickle.UnpicklingError`` if the pickle builds objects nested deeper than
    ``limit`` or uses a memo index beyond its own size, before anything is built.

    Simulates the unpickler's stack with each item's nesting depth. Exact for tuples and
    frozensets (immutable: the ones C code hashes by recursion); containers filled later
    through the memo count the depth they had when stored, which bounds what Python code
    walking them recurses into no worse than their own pickle did.
    """
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[Any, int] = {}
    for op, arg in _opcodes(data):
        before = op.stack_before
        if op.name == "MARK":
            marks.append(len(stack))
            continue
        if pickletools.markobject in before:
            start = marks.pop() if marks else 0
            items = stack[start:] or [0]
            del stack[start:]
            below = [stack.pop() if stack else 0
                     for _ in range(before.index(pickletools.markobject))]
            depth = 1 + max(items)
            stack.append(max(below[0], depth) if below else depth)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            # a real pickle memoizes at most one object per op
            if not isinstance(arg, int) or not 0 <= arg <= len(data):
                raise pickle.UnpicklingError(f"memo index {arg} in a pickle of {len(data)} bytes")
            memo[arg] = stack[-1] if stack else 0
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else 0
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(arg, 0))
        elif op.name == "DUP":
            stack.append(stack[-1] if stack else 0)
        else:
            popped = [stack.pop() if stack else 0 for _ in before]
            if op.name in ("APPEND", "SETITEM", "BUILD"):  # container stays, one level up
                depth = max(popped[-1], 1 + max(popped[:-1]))
            elif op.name.startswith(("TUPLE", "EMPTY_")):
                depth = 1 + max(popped, default=0)
            else:  # REDUCE, NEWOBJ, BINPERSID...: the result holds what it was given
                depth = max(popped, default=0)
            stack.extend(depth for _ in op.stack_after)
        if stack and stack[-1] > limit:
            raise pickle.UnpicklingError(f"objects nested more than {limit} levels deep")


def _opcodes(data: bytes) -> Iterator[tuple[pickletools.OpcodeInfo, Any]]:
    try:
        for op, arg, _ in pickletools.genops(data):
            yield op, arg
    except ValueError as exc:  # pickletools: an unknown opcode, or data that ends early
        raise pickle.UnpicklingError(str(exc)) from exc


def load_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """Load a torch checkpoint without running code from it.

    Args:
        path: the file to read.
        trust: unpickle without the allow-list. Runs whatever the file says: only for files
            whose origin is known.
    Returns:
        The checkpoint's object; its tensors are :class:`StoredTensor`, except for legacy
        (pre-1.6, non-zip) files read with ``trust``.
    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list.
        ExportError: the file is missing or is not a readable torch checkpoint.
    """
    path = Path(path)
    _check_regular_file(path)
    if trust:
        logger.warning("%s: unpickling %s WITHOUT the allow-list; it can run arbitrary code",
                       setting("input.trust", True), path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head.startswith(b"PK\x03\x04") and not is_zip:
        raise ExportError(f"{path} is truncated or damaged: it starts as a torch zip checkpoint "
                          "but its zip directory (at the end of the file) is missing")
    if not is_zip:
        return _load_legacy(path, head, trust)
    archive = CheckpointArchive(path)
    data = archive.read_bytes("data.pkl")
    try:
        check_opcodes(data)
        return _Unpickler(data, archive, trust).load()
    except RefusedGlobal as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it references {exc.qualname}, which is not allowed in "
            f"a checkpoint (set {setting('input.trust', True)} only if you know where the file "
            "comes from)"
        ) from exc
    except BadArguments as exc:
        raise UnsafeCheckpointError(f"refusing to load {path}: {first_line(exc)}") from exc
    except ExportError:
        raise
    except pickle.UnpicklingError as exc:  # the unpickler's, or our scan's and checks' refusal
        raise ExportError(f"{path} is not a readable torch checkpoint: {first_line(exc)}"
                          ) from exc
    except Exception as exc:
        if not trust and _raised_in_our_code(exc):
            raise  # a bug of ours that the unpickler ran into: shown as one, with its traceback
        raise ExportError(f"{path} is not a readable torch checkpoint: {first_line(exc)}"
                          ) from exc


def _raised_in_our_code(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in Python code that the unpickler called: without trust that
    is only this package's allow-listed callables and what they call, past their checks (their
    refusals are ``UnpicklingError``s and never get here). The unpickler's own errors, acting on
    the file's bytes (a call with the wrong arguments, APPEND on a non-list...), are raised in C
    from the frame that ran ``load()``: their traceback has no deeper frame."""
    tb = exc.__traceback__
    return tb is not None and tb.tb_next is not None


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ExportError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise ExportError(f"{path} is a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        raise ExportError(f"{path} is not a regular file ({_file_kind(mode)}): not a checkpoint")
    if os.path.getsize(path) == 0:
        raise ExportError(f"{path} is empty (0 bytes): not a checkpoint")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def _load_legacy(path: Path, head: bytes, trust: bool) -> Any:
    """Pre-1.6 (non-zip) files. torch's legacy reader allocates every storage a pickle
    declares and fills only those whose data follows, so a crafted file yields uninitialised
    memory: it is used only with ``trust``."""
    if not head.startswith(_TORCH_LEGACY_MAGIC):
        raise ExportError(f"{path} is not a readable torch checkpoint: not a zip archive "
                          "(torch.save's format) nor torch's legacy format")
    if not trust:
        raise ExportError(f"{path} is in torch's legacy (pre-1.6) format, which cannot be read "
                          "safely; re-save it with torch.save where it is trusted, or set "
                          f"{setting('input.trust', True)} if you know where it comes from")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # trusted legacy files fail as torch.load fails, in any way
        raise ExportError(f"{path} is not a readable torch checkpoint: {first_line(exc)}"
                          ) from exc
