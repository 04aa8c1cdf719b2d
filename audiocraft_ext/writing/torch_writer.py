"""torch.save, streamed: write a torch zip file one storage at a time.

``torch.save`` needs every tensor in memory at once. This writer pickles the object the way
torch.save does (same records, same rebuild calls, pickle protocol 2, storages keyed "0",
"1", ...) and writes the archive itself (:mod:`.torch_zip`), copying each storage straight
from its source, so a release of N bytes is written while holding a few buffers, and
:class:`StoredTensor` values are never materialised as a whole. ``torch.load`` reads the
result like any torch.save file.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import pickle
import resource
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch._utils import _rebuild_tensor_v2

from ..errors import ExportError
from ..untrusted.lazy_tensors import (
    ComputedTensor,
    SafetensorsTensor,
    Scratch,
    StoredStorage,
    StoredTensor,
    TensorLike,
    contiguous_stride,
    element_size,
    load_into,
)
from .torch_zip import ALIGNMENT, TorchZipWriter, WrittenZip

ProgressFn = Callable[[int], None]
CHUNK = 8 << 20  # bytes per write: large for the disk, small for the hasher's cache


class _OutStorage:
    """A storage to write: its pickled identity, and where its bytes come from: a record of
    the source archive (``stored``: copied chunk by chunk) or a tensor (``value``)."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int, nbytes: int,
                 stored: StoredStorage | None = None, value: TensorLike | None = None) -> None:
        self.key, self.dtype, self.numel, self.nbytes = key, dtype, numel, nbytes
        self.stored, self.value = stored, value


_TYPED_STORAGES = torch.storage._dtype_to_storage_type_map()
# How newer torch saves dtypes without a typed storage; torch 2.1 has neither.
_REBUILD_V3 = getattr(torch._utils, "_rebuild_tensor_v3", None)


def _storage_type(dtype: torch.dtype) -> Any:
    """The storage class torch.save names for ``dtype`` (untyped: uint8 bytes)."""
    if dtype not in _TYPED_STORAGES:
        return torch.storage.UntypedStorage
    return getattr(torch, _TYPED_STORAGES[dtype])


def _rebuild_args(out: _OutStorage, dtype: torch.dtype, offset: int, size: tuple,
                  stride: tuple) -> tuple[Any, tuple]:
    """torch.save's reduction of a tensor: v2 for dtypes with a typed storage, else v3
    (float8, uint16/32/64, complex32), whose storage is untyped bytes."""
    if dtype in _TYPED_STORAGES:
        return _rebuild_tensor_v2, (out, offset, size, stride, False, OrderedDict())
    if _REBUILD_V3 is None:
        raise ExportError(f"torch {torch.__version__} cannot save {dtype} tensors (nor load "
                          "them): export this state with a newer torch")
    return _REBUILD_V3, (out, offset, size, stride, False, OrderedDict(), dtype)


class _StreamingPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)  # torch.save's DEFAULT_PROTOCOL
        self.storages: dict[int, _OutStorage] = {}  # keyed by id() of the source storage

    @property
    def has_stored(self) -> bool:
        return any(out.stored is not None for out in self.storages.values())

    def _storage(self, source: Any, dtype: torch.dtype, numel: int, nbytes: int,
                 **origin: Any) -> _OutStorage:
        if id(source) not in self.storages:
            self.storages[id(source)] = _OutStorage(str(len(self.storages)), dtype, numel,
                                                    nbytes, **origin)
        return self.storages[id(source)]

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, StoredTensor):
            src: StoredStorage = obj.storage
            stored_dtype = src.dtype if obj.dtype in _TYPED_STORAGES else torch.uint8
            out = self._storage(src, stored_dtype, src.nbytes // element_size(stored_dtype),
                                src.nbytes, stored=src)
            return _rebuild_args(out, obj.dtype, obj.offset, obj.size, obj.stride)
        # written as a new storage
        if isinstance(obj, (torch.Tensor, ComputedTensor, SafetensorsTensor)):
            shape = tuple(obj.shape)
            numel = obj.numel()
            nbytes = numel * obj.element_size()
            typed = obj.dtype in _TYPED_STORAGES
            out = self._storage(obj, obj.dtype if typed else torch.uint8,
                                numel if typed else nbytes, nbytes, value=obj)
            return _rebuild_args(out, obj.dtype, 0, shape, contiguous_stride(shape))
        return NotImplemented

    def persistent_id(self, obj: Any) -> tuple | None:
        if isinstance(obj, _OutStorage):
            return ("storage", _storage_type(obj.dtype), obj.key, "cpu", obj.numel)
        return None


def save_streaming(obj: Any, path: Path, progress: ProgressFn | None = None) -> WrittenZip:
    """Write ``obj`` (tensors may be lazy) as a torch.save file at ``path``, fsync'ed, and
    return its size, sha256 and records. ``progress`` gets the bytes of each storage written.

    A record of the source archive is copied chunk by chunk through a few reused buffers: read
    once, CRC-checked against the source's directory and hashed for the release on the way,
    written once. A computed tensor (cast, average) is computed into reused buffers. So memory
    stays flat whatever the size of the state, and no byte is read back.
    """
    buf = io.BytesIO()
    pickler = _StreamingPickler(buf)
    pickler.dump(obj)
    scratch = Scratch()
    # One ring of read buffers for all copied records: a buffer comes round again only after
    # the writer has hashed what it held (it keeps at most IN_FLIGHT chunks unhashed).
    slots = itertools.cycle([memoryview(bytearray(CHUNK)) for _ in range(
        TorchZipWriter.IN_FLIGHT + 1)] if pickler.has_stored else [memoryview(b"")])
    try:
        with TorchZipWriter(path, path.stem) as zw:
            zw.write_record("data.pkl", buf.getvalue())
            zw.write_record(".format_version", b"1")
            zw.write_record(".storage_alignment", str(ALIGNMENT).encode())
            zw.write_record("byteorder", sys.byteorder.encode())
            for out in pickler.storages.values():
                name = f"data/{out.key}"
                if out.stored is not None:
                    out.stored.check_crc(zw.write_chunks(name, out.nbytes,
                                                         out.stored.chunks(slots)))
                else:
                    assert out.value is not None
                    zw.wait()  # the previous computed tensor, in scratch, is hashed
                    zw.write_chunks(name, out.nbytes, _chunked(_bytes_of(out.value, scratch)))
                if progress is not None:
                    progress(out.nbytes)
            return zw.finish()
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {_why_write_failed(path, exc)}") from exc


def _why_write_failed(path: Path, exc: OSError) -> str:
    """The system's reason, with the limit that was hit when it is the file size or disk."""
    reason = exc.strerror or str(exc)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if exc.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
        return f"{reason} (the file size limit, ulimit -f, is {limit} bytes)"
    if exc.errno == errno.ENOSPC:
        disk = os.statvfs(path.parent)
        return f"{reason} ({disk.f_bavail * disk.f_frsize} bytes free)"
    return reason


def _bytes_of(value: TensorLike, scratch: Scratch) -> memoryview:
    """The bytes of ``value`` made contiguous (in ``scratch`` unless it is a tensor)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
    else:
        tensor = load_into(value, scratch).contiguous()
    flat = tensor.reshape(-1).view(torch.uint8)
    return flat.numpy().data.cast("B") if flat.numel() else memoryview(b"")


def _chunked(view: memoryview) -> Iterator[memoryview]:
    """``view`` in CHUNK-sized pieces, so that hashing overlaps writing."""
    for start in range(0, len(view), CHUNK):
        yield view[start:start + CHUNK]
