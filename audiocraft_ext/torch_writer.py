"""torch.save, streamed: write a torch zip file one storage at a time.

``torch.save`` needs every tensor in memory at once. This writer pickles the object the way
torch.save does (same records, same rebuild calls, pickle protocol 2, storages keyed "0",
"1", ...) but copies each storage into the archive straight from its source, so a release of
N bytes is written while holding one storage at a time, and :class:`StoredTensor` values are
never materialised as a whole. ``torch.load`` reads the result like any torch.save file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import resource
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch._utils import _rebuild_tensor_v2

from .errors import ExportError
from .lazy_tensors import ComputedTensor, StoredStorage, StoredTensor, as_tensor, element_size

ProgressFn = Callable[[int], None]
# Recent torch takes the storage itself and deprecates raw pointers; torch 2.1 takes pointers.
_WRITES_STORAGES = "StorageBase" in (torch._C.PyTorchFileWriter.write_record.__doc__ or "")


class _OutStorage:
    """A storage to write: its pickled identity, and where its bytes come from: a record of
    the source archive (``stored``, read into a buffer reused for every record) or a tensor
    (``read``)."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int, nbytes: int,
                 stored: StoredStorage | None = None,
                 read: Callable[[], torch.Tensor] | None = None) -> None:
        self.key, self.dtype, self.numel, self.nbytes = key, dtype, numel, nbytes
        self.stored, self.read = stored, read

    def flat(self, buffer: torch.Tensor) -> torch.Tensor:
        """The storage's bytes as a flat uint8 tensor starting at its storage's start."""
        if self.stored is None:
            assert self.read is not None
            return self.read()
        self.stored.read_into(buffer[: self.nbytes])
        return buffer


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


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
        if isinstance(obj, (torch.Tensor, ComputedTensor)):  # written as a new storage
            value = obj.detach().cpu().contiguous() if isinstance(obj, torch.Tensor) else obj
            shape = tuple(obj.shape)
            numel = obj.numel()
            nbytes = numel * obj.element_size()
            typed = obj.dtype in _TYPED_STORAGES
            out = self._storage(obj, obj.dtype if typed else torch.uint8,
                                numel if typed else nbytes, nbytes,
                                read=lambda: as_tensor(value).reshape(-1).view(torch.uint8))
            return _rebuild_args(out, obj.dtype, 0, shape, _contiguous_stride(shape))
        return NotImplemented

    def persistent_id(self, obj: Any) -> tuple | None:
        if isinstance(obj, _OutStorage):
            return ("storage", _storage_type(obj.dtype), obj.key, "cpu", obj.numel)
        return None


def save_streaming(obj: Any, path: Path, progress: ProgressFn | None = None) -> str:
    """Write ``obj`` (tensors may be :class:`StoredTensor`) as a torch.save file at ``path``,
    fsync'ed, and return its sha256. ``progress`` gets the bytes of each storage written.

    Records of the source archive are read (CRC-checked against the source's directory) into
    one buffer, reused for every record so that memory stays flat, and handed from there to
    torch's zip writer.
    """
    buf = io.BytesIO()
    pickler = _StreamingPickler(buf)
    pickler.dump(obj)
    data = buf.getvalue()
    largest = max((o.nbytes for o in pickler.storages.values() if o.stored is not None),
                  default=0)
    buffer = torch.empty(largest, dtype=torch.uint8)
    try:
        with torch.serialization._open_zipfile_writer(str(path)) as zf:
            zf.write_record("data.pkl", data, len(data))
            if hasattr(torch.serialization, "_get_storage_alignment"):  # as torch.save does
                zf.write_record(".format_version", "1", 1)
                alignment = str(torch.serialization._get_storage_alignment())
                zf.write_record(".storage_alignment", alignment, len(alignment))
            zf.write_record("byteorder", sys.byteorder, len(sys.byteorder))
            for out in pickler.storages.values():
                flat = out.flat(buffer)
                if _WRITES_STORAGES:
                    if flat.storage_offset():
                        flat = flat.clone()  # a view: write its bytes, not its base's
                    # torch writes the first out.nbytes bytes of the storage
                    record: Any = flat.untyped_storage()
                else:
                    record = flat.data_ptr()
                zf.write_record(f"data/{out.key}", record, out.nbytes)
                del flat, record
                if progress is not None:
                    progress(out.nbytes)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            return digest.hexdigest()
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:  # torch's zip writer reports failed writes without errno
        raise ExportError(f"cannot write {path}: {_why_write_failed(path, exc)}") from exc


def _why_write_failed(path: Path, exc: RuntimeError) -> str:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = path.stat().st_size if path.exists() else 0
    if limit != resource.RLIM_INFINITY and size >= limit - (1 << 16):
        return f"File too large (the file size limit, ulimit -f, is {limit} bytes)"
    disk = os.statvfs(path.parent)
    if disk.f_bavail * disk.f_frsize < (64 << 20):
        return f"No space left on device ({disk.f_bavail * disk.f_frsize} bytes free)"
    return f"the write stopped short ({str(exc).splitlines()[0]})"

