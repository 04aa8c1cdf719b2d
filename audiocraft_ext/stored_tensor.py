"""Tensors that are still in their checkpoint file: shape and dtype known, bytes read on demand.

Loading a training checkpoint this way costs only its pickled structure (configs, history,
shapes); the bytes of a storage are read, CRC-checked, only when a tensor is asked for, so the
optimizer and EMA states of a multi-GB checkpoint are never read at all.
"""

from __future__ import annotations

import mmap
import struct
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import torch

from .errors import ExportError, first_line


class CheckpointArchive:
    """An open torch zip checkpoint (torch.save's format since torch 1.6)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
            pickles = [n for n in self._zip.namelist() if n.count("/") == 1
                       and n.endswith("/data.pkl")]
        except Exception as exc:  # a damaged zip directory fails in many ways
            raise ExportError(f"{path} is a damaged checkpoint archive: {first_line(exc)}"
                              ) from None
        if len(pickles) != 1:
            raise ExportError(f"{path} is a zip file but not a torch checkpoint (no data.pkl)")
        self.prefix = pickles[0][: -len("data.pkl")]
        if self._zip.NameToInfo.get(self.prefix + "byteorder") is not None \
                and self.read_bytes("byteorder") != b"little":
            raise ExportError(f"{path} was saved on a big-endian machine; not supported")

    @contextmanager
    def _reading(self, record: str) -> Iterator[None]:
        """Turn any failure to read ``record`` (bad CRC, damaged header, unknown compression,
        ...) into one ExportError naming it."""
        try:
            yield
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"{self.path} is damaged: cannot read its record {record!r}: "
                              f"{first_line(exc)}") from None

    def read_bytes(self, record: str) -> bytes:
        """A whole record, CRC-checked."""
        with self._reading(record):
            return self._zip.read(self.prefix + record)

    def read_storage(self, key: str, nbytes: int) -> torch.Tensor:
        """Storage ``key`` as a flat uint8 tensor, read straight into tensor memory."""
        buf = torch.empty(nbytes, dtype=torch.uint8)
        record = f"data/{key}"
        with self._reading(record):
            info = self._zip.getinfo(self.prefix + record)
            if info.file_size != nbytes:
                raise ExportError(f"{self.path} is damaged: its record {record!r} holds "
                                  f"{info.file_size} bytes, its tensor needs {nbytes}")
            with self._zip.open(info) as f:
                view = memoryview(buf.numpy())
                done = 0
                while done < nbytes:
                    n = f.readinto(view[done:])
                    if not n:
                        raise EOFError("record ends early")
                    done += n
                f.read(1)  # reaching the end is what makes zipfile verify the CRC
        return buf

    def record_crc(self, key: str) -> int:
        """The CRC-32 the archive's directory records for storage ``key``."""
        return self._zip.getinfo(f"{self.prefix}data/{key}").CRC

    def _data_offset(self, record: str, nbytes: int) -> int:
        """Where the ``nbytes`` stored bytes of ``record`` start in the file."""
        with self._reading(record):
            info = self._zip.getinfo(self.prefix + record)
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise ExportError(f"{self.path} is damaged: bad header for record {record!r}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes \
                    or start + nbytes > self.path.stat().st_size:
                raise ExportError(f"{self.path} is damaged: its record {record!r} is not "
                                  f"the {nbytes} stored bytes its tensor needs")
        return start

    @contextmanager
    def mapped_storage(self, key: str, nbytes: int) -> Iterator[torch.Tensor]:
        """Storage ``key`` as a flat uint8 tensor over a read-only map of the file: nothing is
        copied, and the pages leave this process's memory when the block ends. The bytes are
        not CRC-checked here: compare :meth:`record_crc` with the CRC of what was written."""
        record = f"data/{key}"
        start = self._data_offset(record, nbytes)
        if nbytes == 0:
            yield torch.empty(0, dtype=torch.uint8)
            return
        base = start - start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f, self._reading(record):
            view = mmap.mmap(f.fileno(), start + nbytes - base, offset=base,
                             access=mmap.ACCESS_READ)
        try:
            with warnings.catch_warnings():  # read-only on purpose: torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(view, dtype=torch.uint8, count=nbytes, offset=start - base)
            yield flat
            del flat  # the map can only close once no tensor refers to it
        finally:
            try:
                view.close()
            except BufferError:  # the caller failed while holding the tensor: GC closes it
                pass


@dataclass(eq=False)
class StoredStorage:
    archive: CheckpointArchive
    key: str
    dtype: torch.dtype
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * _element_size(self.dtype)

    def read(self) -> torch.Tensor:
        """The storage's bytes as a flat uint8 tensor."""
        return self.archive.read_storage(self.key, self.nbytes)

    def mapped(self):  # -> context manager yielding a flat uint8 tensor
        return self.archive.mapped_storage(self.key, self.nbytes)

    @property
    def crc(self) -> int:
        return self.archive.record_crc(self.key)


@dataclass(eq=False)
class StoredTensor:
    """A tensor view (offset, size, stride) of a storage that is still on disk."""

    storage: StoredStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return _element_size(self.dtype)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def load(self) -> torch.Tensor:
        """Read the tensor (its whole storage) into memory."""
        flat = self.storage.read()
        flat = flat.view(self.dtype) if flat.numel() else torch.empty(0, dtype=self.dtype)
        return flat.as_strided(self.size, self.stride, self.offset)

    def __repr__(self) -> str:
        return f"StoredTensor({tuple(self.size)}, {self.dtype}, key={self.storage.key})"


@dataclass(eq=False)
class ComputedTensor:
    """A tensor computed from same-shaped ``sources`` when it is read, as ``dtype``."""

    sources: list  # of TensorLike
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.sources[0].shape

    def numel(self) -> int:
        return self.sources[0].numel()

    def element_size(self) -> int:
        return _element_size(self.dtype)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point


class CastTensor(ComputedTensor):
    """One tensor cast to ``dtype`` (``output.dtype``)."""

    def load(self) -> torch.Tensor:
        return as_tensor(self.sources[0]).to(self.dtype).contiguous()


class AverageTensor(ComputedTensor):
    """The mean of the sources, computed in float32 and cast to ``dtype`` (state=average)."""

    def load(self) -> torch.Tensor:
        total = torch.zeros(self.shape, dtype=torch.float32)
        for source in self.sources:
            total += as_tensor(source).to(torch.float32)
        return (total / len(self.sources)).to(self.dtype).contiguous()


TensorLike = Union[torch.Tensor, StoredTensor, CastTensor, AverageTensor]


def is_tensor(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, StoredTensor, ComputedTensor))


def as_tensor(value: TensorLike) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.load()


def cast_state(state: Mapping[str, TensorLike], dtype: torch.dtype) -> dict[str, TensorLike]:
    """``state`` with its floating-point tensors cast to ``dtype`` on read; others untouched."""
    return {k: CastTensor([v], dtype) if v.is_floating_point() and v.dtype != dtype else v
            for k, v in state.items()}


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
