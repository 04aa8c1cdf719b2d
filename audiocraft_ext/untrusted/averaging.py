"""state=average: the mean of one state over several epoch checkpoints of an XP."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import StateChoice
from ..errors import ExportError
from .lazy_tensors import AverageTensor
from .states import StateDict, load_solver_checkpoint, select_state

_EPOCH_FILE = re.compile(r"^checkpoint_(\d+)\.th$")


def epoch_checkpoints(xp_dir: Path) -> dict[int, Path]:
    """The XP's ``checkpoint_<epoch>.th`` files (written with ``checkpoint.save_every``)."""
    found = {}
    for path in xp_dir.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found[int(match[1])] = path
    return dict(sorted(found.items()))


def average_members(xp_dir: Path, last_k: int, epochs: Sequence[int] | None) -> list[Path]:
    """The epoch checkpoints to average: ``epochs`` if given, else the last ``last_k``."""
    available = epoch_checkpoints(xp_dir)
    if epochs:
        missing = [e for e in epochs if e not in available]
        if missing:
            raise ExportError(f"state=average: no checkpoint_{missing[0]}.th in {xp_dir} "
                              f"(epochs there: {list(available) or 'none'})")
        return [available[e] for e in epochs]
    if last_k < 1:
        raise ExportError(f"state.last_k={last_k}: average at least one checkpoint")
    if len(available) < last_k:
        raise ExportError(f"state=average needs {last_k} epoch checkpoints in {xp_dir}, found "
                          f"{len(available)} ({list(available) or 'none'}); train with "
                          "checkpoint.save_every, or set state.last_k / state.epochs")
    return list(available.values())[-last_k:]


def average_state(members: Sequence[Path], of: StateChoice, trust: bool = False,
                  ) -> tuple[StateDict, list[dict[str, Any]]]:
    """Average state ``of`` over ``members`` (in float32, cast back to each tensor's dtype);
    integer tensors are taken from the last member. Returns the (lazy) state and the members'
    facts for the manifest."""
    states, facts = [], []
    for path in members:
        pkg = load_solver_checkpoint(path, trust=trust)
        key, state = select_state(pkg, of, source=str(path))
        states.append(state)
        facts.append({"path": str(path), "key": key})
    first, first_path = states[0], members[0]
    for state, path in zip(states[1:], members[1:], strict=True):
        _same_layout(first, first_path, state, path)
    averaged = {k: AverageTensor([s[k] for s in states], v.dtype) if v.is_floating_point()
                else states[-1][k] for k, v in first.items()}
    return averaged, facts


def _same_layout(a: StateDict, a_path: Path, b: StateDict, b_path: Path) -> None:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        key, where = (only_a[0], a_path) if only_a else (only_b[0], b_path)
        raise ExportError(f"state=average: {key!r} is only in {where}; cannot average "
                          f"{a_path.name} and {b_path.name}")
    for key in a:
        if tuple(a[key].shape) != tuple(b[key].shape) or a[key].dtype != b[key].dtype:
            raise ExportError(f"state=average: {key!r} is {tuple(a[key].shape)} {a[key].dtype} "
                              f"in {a_path.name} but {tuple(b[key].shape)} {b[key].dtype} in "
                              f"{b_path.name}")
