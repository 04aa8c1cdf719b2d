"""Tensor comparison, exact to the bit, and the check that a release file holds what was
written: torch and our lazy tensors only, no audiocraft."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..reporting.progress import byte_progress
from ..untrusted.lazy_tensors import (
    Scratch,
    StoredTensor,
    TensorLike,
    as_tensor,
    contiguous_stride,
    load_into,
)
from ..untrusted.safe_load import load_checkpoint
from ..untrusted.states import StateDict
from ..writing.torch_zip import WrittenZip

logger = logging.getLogger(__name__)


def compare_states(expected: Mapping[str, TensorLike], actual: Mapping[str, TensorLike],
                   what: str, cast: bool = False) -> None:
    """Raise unless both hold the same keys and exactly equal tensors.

    With ``cast``, ``expected`` is first cast to each actual tensor's dtype (a float16 best
    state reloaded into a float32 model is exact, so equality still proves every value).
    Expected tensors are read (or computed) one at a time into reused buffers.
    """
    check_same_keys(expected, actual, what)
    scratch = Scratch()
    differ = []
    total = sum(t.numel() * t.element_size() for t in expected.values())
    logger.info("comparing %d tensors (%.1f MB) of %s with the source", len(expected),
                total / 1e6, what)
    advance, close = byte_progress(total, f"comparing {what}")
    for key, stored in expected.items():
        advance(stored.numel() * stored.element_size())
        want, got = load_into(stored, scratch), as_tensor(actual[key])
        if not cast and got.dtype != want.dtype:
            differ.append(f"{key} ({want.dtype} became {got.dtype})")
        elif got.shape != want.shape:
            differ.append(f"{key} (shape {tuple(want.shape)} became {tuple(got.shape)})")
        else:
            if want.dtype != got.dtype:
                want = scratch.tensor("compare", want.shape, got.dtype).copy_(want)
            if not same_bits(got.cpu(), want):
                differ.append(key)
    close()
    if differ:
        raise ExportError(f"{what}: {len(differ)} of {len(expected)} tensors differ from the "
                          f"source state, first {differ[0]}")


def check_same_keys(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise ExportError(f"{what}: keys differ from the source state: "
                          + ", ".join(p for p in parts if p))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold bit-identical elements (NaN equals the same NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool or a.element_size() == 0 or a.numel() == 0:
        return torch.equal(a, b)
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if bits is None:  # complex128: two float64 per element
        return same_bits(torch.view_as_real(a), torch.view_as_real(b))
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def check_release_file(path: Path, state: StateDict, written: WrittenZip) -> None:
    """The file holds what was written, without reading its tensors' bytes: its size, its
    layout, each tensor's dtype, shape and view, and each storage record's CRC-32 in its
    directory equal to the one computed on the bytes as they were written (for a record
    copied as it is, also to the source's own). The bytes themselves are proven by the load
    checks, which compare every value."""
    size = path.stat().st_size
    if size != written.size:
        raise ExportError(f"{path.name} holds {size} bytes; {written.size} were written")
    pkg = load_checkpoint(path)
    if sorted(pkg) != ["best_state", "exported", "version", "xp.cfg"] \
            or not isinstance(pkg["xp.cfg"], str) or pkg["exported"] is not True:
        raise ExportError(f"{path.name} does not have the release layout: keys {sorted(pkg)}")
    released = pkg["best_state"]
    check_same_keys(state, released, path.name)
    differ = [f"{key} ({problem})" for key, want in state.items()
              if (problem := _record_problem(want, released[key], written))]
    if differ:
        raise ExportError(f"{path.name}: {len(differ)} of {len(state)} tensors are not as "
                          f"written, first {differ[0]}")


def _record_problem(want: TensorLike, got: Any, written: WrittenZip) -> str | None:
    """How the released tensor ``got`` differs from what was written for ``want``, or None."""
    if not isinstance(got, StoredTensor):
        return f"a {type(got).__name__}, not a stored tensor"
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{want.dtype} {tuple(want.shape)} became {got.dtype} {tuple(got.shape)}"
    archive, record = got.storage.archive, got.storage.record
    wrote = written.records.get(archive.prefix + record)
    if wrote is None or archive.data_offset(record) != wrote.offset:
        return f"its record {record} is not where it was written"
    if archive.crc(record) != wrote.crc:
        return "its record's CRC-32 differs from the bytes written"
    if isinstance(want, StoredTensor):  # copied as it is: same view of the same bytes
        if (got.offset, got.stride) != (want.offset, want.stride):
            return "its view (offset, stride) differs from the source's"
        if wrote.crc != want.storage.archive.crc(want.storage.record):
            return "its bytes differ from the source record's"
    elif got.offset != 0 or got.stride != contiguous_stride(got.size):
        return "a computed tensor not stored contiguously"
    return None
