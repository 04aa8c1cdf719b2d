"""Lazy tensors: shape and dtype known, bytes read (or computed) only when asked for.

Loading a training checkpoint this way costs only its pickled structure (configs, history,
shapes); the bytes of a storage are read, CRC-checked, only when a tensor is asked for, so the
optimizer and EMA states of a multi-GB checkpoint are never read at all.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import ExportError
from .archive import CheckpointArchive

# A view may hold more elements than its storage only by repeating them (stride 0, overlapping
# strides). Legitimate states hardly do; a crafted one uses it to make a 1-element record
# stand for 10^12 elements that every comparison would then walk. Allowed up to this slack.
MAX_REPEATED_ELEMENTS = 1 << 24


class _NotFromPickles:
    """Made by the reader from a checked persistent id or view, never restored from a
    pickle's state: BUILD would move a view or resize a storage after it was checked."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"BUILD on a {type(self).__name__}, which takes no state")


@dataclass(eq=False)
class StoredStorage(_NotFromPickles):
    """A storage record of the archive: ``numel`` elements of ``dtype`` (uint8 for the
    untyped storages of ``_rebuild_tensor_v3`` tensors)."""

    archive: CheckpointArchive
    key: str
    dtype: torch.dtype
    numel: int

    @property
    def record(self) -> str:
        return f"data/{self.key}"

    @property
    def nbytes(self) -> int:
        return self.numel * element_size(self.dtype)

    def read_into(self, out: torch.Tensor) -> None:
        """Read the storage's bytes into the flat uint8 tensor ``out`` of :attr:`nbytes`."""
        self.archive.read_into(self.record, out)

    def read(self) -> torch.Tensor:
        """The storage's bytes as a new flat uint8 tensor."""
        out = torch.empty(self.nbytes, dtype=torch.uint8)
        self.read_into(out)
        return out

    def chunks(self, slots: Iterator[memoryview]) -> Iterator[memoryview]:
        """The storage's bytes, chunk by chunk, each read into the next of ``slots``; the
        consumer hands their CRC-32 to :meth:`check_crc`."""
        return self.archive.chunks(self.record, self.nbytes, slots)

    def check_crc(self, crc: int) -> None:
        self.archive.check_crc(self.record, crc)


@dataclass(eq=False)
class StoredTensor(_NotFromPickles):
    """A tensor view (offset, size, stride, in elements of ``dtype``) of a storage that is
    still on disk. ``dtype`` differs from the storage's only for untyped storages."""

    storage: StoredStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def numel(self) -> int:
        return math.prod(self.size)

    def element_size(self) -> int:
        return element_size(self.dtype)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def load(self) -> torch.Tensor:
        """Read the tensor (its whole storage) into memory."""
        return self.load_into(Scratch())

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        """The tensor, read into ``scratch``'s ``"stored"`` buffer (valid until it is reused)."""
        flat = scratch.take("stored", self.storage.nbytes)
        self.storage.read_into(flat)
        flat = flat.view(self.dtype) if flat.numel() else torch.empty(0, dtype=self.dtype)
        return flat.as_strided(self.size, self.stride, self.offset)

    def __repr__(self) -> str:
        return f"StoredTensor({tuple(self.size)}, {self.dtype}, key={self.storage.key})"


class Scratch:
    """Buffers reused from one tensor to the next.

    Reading or computing tensors one after another into fresh allocations leaves freed blocks
    of every size in the C heap, which is not given back to the system: the process grows to
    a multiple of the largest tensor. Reused buffers cost the largest tensor, once.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, nbytes: int) -> torch.Tensor:
        """A flat uint8 tensor of ``nbytes`` in buffer ``name``, grown when too small; what
        it held before is overwritten by whoever takes it next."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            self._buffers.pop(name, None)  # freed before its successor is allocated
            buffer = self._buffers[name] = torch.empty(nbytes, dtype=torch.uint8)
        return buffer[:nbytes]

    def tensor(self, name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A contiguous tensor of ``shape`` and ``dtype`` in buffer ``name``."""
        nbytes = math.prod(shape) * element_size(dtype)
        flat = self.take(name, nbytes)
        return (flat.view(dtype) if nbytes else torch.empty(0, dtype=dtype)).view(shape)


class LazyTensor(Protocol):
    """What the writer, the comparisons and the manifest need of a tensor not in memory yet."""

    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size: ...

    def numel(self) -> int: ...

    def element_size(self) -> int: ...

    def is_floating_point(self) -> bool: ...

    def load(self) -> torch.Tensor:
        """The tensor, in memory."""
        ...

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        """The tensor, in ``scratch``'s buffers: valid until the next use of ``scratch``."""
        ...


TensorLike = torch.Tensor | LazyTensor


@dataclass(eq=False)
class ComputedTensor:
    """A tensor computed from ``sources`` when it is read, as ``dtype`` (same-shaped sources,
    but for :class:`ConcatTensor`, which overrides the shape)."""

    sources: list[TensorLike]
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.sources[0].shape

    def numel(self) -> int:
        return self.sources[0].numel()

    def element_size(self) -> int:
        return element_size(self.dtype)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def load(self) -> torch.Tensor:
        """The computed tensor, contiguous (subclasses compute it, or override
        :meth:`load_into`)."""
        return self.load_into(Scratch())

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        return self.load()


class CastTensor(ComputedTensor):
    """One tensor cast to ``dtype`` (``output.dtype``)."""

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        out = scratch.tensor("result", self.shape, self.dtype)
        out.copy_(load_into(self.sources[0], scratch))
        return out


class AverageTensor(ComputedTensor):
    """The mean of the sources, computed in float32 and cast to ``dtype`` (state=average)."""

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        total = scratch.tensor("sum", self.shape, torch.float32).zero_()
        for source in self.sources:
            total.add_(load_into(source, scratch))
        total.div_(len(self.sources))
        out = scratch.tensor("result", self.shape, self.dtype)
        out.copy_(total)
        return out


class ConcatTensor(ComputedTensor):
    """The sources joined along their first dimension (transformers' q, k, v projections as
    AudioCraft's packed ``in_proj_weight``)."""

    @property
    def shape(self) -> torch.Size:
        first = self.sources[0].shape
        return torch.Size((sum(s.shape[0] for s in self.sources), *first[1:]))

    def numel(self) -> int:
        return sum(s.numel() for s in self.sources)

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        # its own buffer: a CastTensor over it writes into "result"
        out = scratch.tensor("concat", self.shape, self.dtype)
        start = 0
        for source in self.sources:
            rows = source.shape[0]
            out[start:start + rows].copy_(as_tensor(source))
            start += rows
        return out


@dataclass(eq=False)
class SafetensorsTensor:
    """One tensor of a safetensors file, read when needed (a :class:`LazyTensor`)."""

    file: Path
    name: str
    size: tuple[int, ...]
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return element_size(self.dtype)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def load(self) -> torch.Tensor:
        from safetensors import safe_open  # safetensors' own parser: no code runs

        with safe_open(str(self.file), framework="pt") as f:
            tensor = f.get_tensor(self.name)
        if tuple(tensor.shape) != self.size or tensor.dtype != self.dtype:
            raise ExportError(f"{self.file} changed while it was read ({self.name} is now "
                              f"{list(tensor.shape)} {tensor.dtype})")
        return tensor

    def load_into(self, scratch: Scratch) -> torch.Tensor:
        return self.load()


def is_tensor(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, StoredTensor, ComputedTensor,
                              SafetensorsTensor))


def as_tensor(value: TensorLike) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.load()


def load_into(value: TensorLike, scratch: Scratch) -> torch.Tensor:
    """``value`` in memory, in ``scratch``'s buffers unless it already is a tensor."""
    return value if isinstance(value, torch.Tensor) else value.load_into(scratch)


def cast_state(state: Mapping[str, TensorLike], dtype: torch.dtype) -> dict[str, TensorLike]:
    """``state`` with its floating-point tensors cast to ``dtype`` on read; others untouched."""
    return {k: CastTensor([v], dtype) if v.is_floating_point() and v.dtype != dtype else v
            for k, v in state.items()}


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``, in elements."""
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def view_problem(nbytes: int, dtype: torch.dtype, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> str | None:
    """Why the view (offset, size, stride) of ``dtype`` elements cannot be read from a storage
    of ``nbytes`` bytes, or None when it can (and costs at most its storage's size to read)."""
    elsize = element_size(dtype)
    if nbytes % elsize:
        return f"its storage of {nbytes} bytes is not a whole number of {dtype} elements"
    available = nbytes // elsize
    numel = math.prod(size)
    if numel == 0:
        return None if offset <= available else "its offset lies outside its storage"
    end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if end > available:
        return (f"it reaches element {end - 1} of a storage of {available} elements "
                "(size, stride or offset outside the storage)")
    if numel > max(available, MAX_REPEATED_ELEMENTS):
        return (f"it repeats the {available} elements of its storage as {numel} "
                "(a stride-0 or overlapping view)")
    return None
