"""Pick the weights to release out of a solver checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import StateChoice
from ..errors import ExportError, shown
from .lazy_tensors import StoredTensor, TensorLike, is_tensor
from .safe_load import load_checkpoint

MAX_REPEATED_BYTES = 64 << 20  # what repeating views may add to a state, beyond 2x its storages

logger = logging.getLogger(__name__)

StateDict = dict[str, TensorLike]

# The checkpoint key holding each single-state choice, in the order inspection lists them;
# best states are {'model': state_dict}, `model` is flat, `ema` is {'state': {'model': ...}}.
STATE_KEYS = {StateChoice.fsdp_best: "fsdp_best_state", StateChoice.best: "best_state",
              StateChoice.last: "model", StateChoice.ema: "ema"}


# Plain dicts only: a DictConfig is a Mapping too, and reading it resolves interpolations.
def _model_state(pkg: Mapping[str, Any], key: str, source: str) -> StateDict | None:
    """The flat state dict under ``key``; None when it is absent or empty."""
    value = pkg.get(key)
    if key == "ema" and isinstance(value, dict):  # ModuleDictEMA: {'state': {'model': ...}}
        value = value.get("state")
    if key != "model" and isinstance(value, dict) and value:
        if "model" not in value:
            raise ExportError(f"{source}: '{key}' has no 'model' entry (it holds "
                              f"{shown(sorted(map(str, value))[:5], 200)}): not a solver's "
                              "best state")
        value = value["model"]
    return dict(value) if isinstance(value, dict) and value else None


def load_solver_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """A checkpoint that must be a solver's key/value dict (tensors left on disk)."""
    pkg = load_checkpoint(path, trust=trust)
    if not isinstance(pkg, dict):
        raise ExportError(f"{path} holds a {type(pkg).__name__}, not a solver checkpoint")
    return pkg


def xp_signature(pkg: Mapping[str, Any]) -> str | None:
    """The checkpoint's Dora signature (``xp.sig``), when it is one (short, printable)."""
    sig = pkg.get("xp.sig")
    return sig if type(sig) is str and len(sig) <= 64 and sig.isprintable() else None


def select_state(pkg: Mapping[str, Any], choice: StateChoice, source: str = "checkpoint",
                 ) -> tuple[str, StateDict]:
    """Return ``(checkpoint key, flat model state dict)`` for ``choice``.

    ``auto`` follows audiocraft's export_lm: a non-empty ``fsdp_best_state`` wins (on FSDP runs
    rank 0's ``best_state`` holds only its own shards), else ``best_state``.
    """
    if not isinstance(choice, StateChoice):  # strings become enums at export_release's boundary
        raise TypeError(f"choice must be a StateChoice, not {choice!r}")
    if choice is StateChoice.auto:
        for key in ("fsdp_best_state", "best_state"):
            state = _model_state(pkg, key, source)
            if state is not None:
                return key, checked_state(state, key, source)
            if key == "fsdp_best_state" and isinstance(pkg.get(key), dict) and pkg[key]:
                logger.warning("%s: fsdp_best_state holds an empty model state; exporting "
                               "best_state instead (export_lm would export the empty state)",
                               source)
        present = [k for k in ("fsdp_best_state", "best_state") if k in pkg]
        raise ExportError(
            f"{source} has no usable best state: "
            + (f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} empty"
               if present else "neither fsdp_best_state nor best_state is present")
            + " (state=last exports the raw model weights instead)")
    if choice is StateChoice.average:
        raise ValueError("state=average spans several checkpoints: see averaging.average_state")
    key = STATE_KEYS[choice]
    state = _model_state(pkg, key, source)
    if key == "ema" and key in pkg and pkg[key] is None:
        raise ExportError(f"{source}: state=ema, but EMA was off in this run ('ema' is None; "
                          "optim.ema.use=false); choose state=best or state=last")
    if state is None:
        why = "is empty" if key in pkg else "is missing"
        raise ExportError(f"{source}: state={choice.value} needs '{key}', which {why}")
    return key, checked_state(state, key, source)


def checked_state(state: StateDict, key: str, source: str) -> StateDict:
    """``state``, once every entry is a parameter name and a tensor, and its tensors do not
    stand for far more bytes than their storages hold."""
    for name, value in state.items():
        if type(name) is not str:
            raise ExportError(f"{source}: '{key}' is not a model state dict (it has a key of "
                              f"type {shown(type(name).__name__)}, not a parameter name)")
        if not is_tensor(value):
            raise ExportError(f"{source}: '{key}' is not a model state dict ({shown(name)} is "
                              f"a {shown(type(value).__name__)}, not a tensor)")
    # Each view is bounded by its storage (allowlist), but many views of one storage are not:
    # 10^6 views of 2^24 repeated elements make every comparison walk 10^13 elements.
    logical = sum(v.numel() * v.element_size() for v in state.values())
    storages = {id(v.storage): v.storage.nbytes for v in state.values()
                if isinstance(v, StoredTensor)}
    stored = sum(storages.values()) + sum(v.numel() * v.element_size() for v in state.values()
                                          if not isinstance(v, StoredTensor))
    if logical > 2 * stored + MAX_REPEATED_BYTES:
        raise ExportError(f"{source}: the tensors of '{key}' stand for {logical} bytes but their "
                          f"storages hold {stored}: views that repeat their storages; refusing")
    return state
