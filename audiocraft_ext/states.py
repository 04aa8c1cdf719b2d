"""Pick the weights to release out of a solver checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from .config import StateChoice
from .errors import ExportError, first_line
from .safe_load import load_checkpoint
from .stored_tensor import TensorLike, is_tensor

StateDict = dict[str, TensorLike]

# checkpoint key holding each choice; best states are {'model': state_dict}, `model` is flat.
_KEYS = {StateChoice.fsdp_best: "fsdp_best_state", StateChoice.best: "best_state",
         StateChoice.last: "model", StateChoice.ema: "ema"}


def _model_state(pkg: Mapping[str, Any], key: str) -> StateDict | None:
    value = pkg.get(key)
    if key == "ema" and isinstance(value, Mapping):  # ModuleDictEMA: {'state': {'model': ...}}
        value = value.get("state")
    if key != "model" and isinstance(value, Mapping):
        value = value.get("model")
    return dict(value) if isinstance(value, Mapping) and value else None


def load_solver_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """A checkpoint that must be a solver's key/value dict (tensors left on disk)."""
    pkg = load_checkpoint(path, trust=trust)
    if not isinstance(pkg, dict):
        raise ExportError(f"{path} holds a {type(pkg).__name__}, not a solver checkpoint")
    return pkg


def xp_config(pkg: Mapping[str, Any], source: str) -> DictConfig:
    """The checkpoint's ``xp.cfg``, checked to be a whole, readable config."""
    cfg = pkg.get("xp.cfg")
    if not isinstance(cfg, DictConfig):
        raise ExportError(f"{source} has no xp.cfg config "
                          f"({'missing' if cfg is None else type(cfg).__name__}): "
                          "not an AudioCraft solver checkpoint")
    try:  # a damaged pickle can rebuild a DictConfig that fails only when it is read
        OmegaConf.to_yaml(cfg)
    except Exception as exc:
        raise ExportError(f"{source}: its xp.cfg is damaged ({first_line(exc)})") from None
    return cfg


def select_state(pkg: Mapping[str, Any], choice: StateChoice | str, source: str = "checkpoint",
                 ) -> tuple[str, StateDict]:
    """Return ``(checkpoint key, flat model state dict)`` for ``choice``.

    ``auto`` follows audiocraft's export_lm: a non-empty ``fsdp_best_state`` wins (on FSDP runs
    rank 0's ``best_state`` holds only its own shards), else ``best_state``.
    """
    choice = StateChoice(choice)
    if choice is StateChoice.auto:
        for key in ("fsdp_best_state", "best_state"):
            state = _model_state(pkg, key)
            if state is not None:
                return key, _checked(state, key, source)
        present = [k for k in ("fsdp_best_state", "best_state") if k in pkg]
        raise ExportError(
            f"{source} has no usable best state: "
            + (f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} empty"
               if present else "neither fsdp_best_state nor best_state is present")
            + " (state=last exports the raw model weights instead)")
    if choice is StateChoice.average:
        raise ValueError("state=average spans several checkpoints: see averaging.average_state")
    key = _KEYS[choice]
    state = _model_state(pkg, key)
    if key == "ema" and key in pkg and pkg[key] is None:
        raise ExportError(f"{source}: state=ema, but EMA was off in this run ('ema' is None; "
                          "optim.ema.use=false); choose state=best or state=last")
    if state is None:
        why = "is empty" if key in pkg else "is missing"
        raise ExportError(f"{source}: state={choice.value} needs '{key}', which {why}")
    return key, _checked(state, key, source)


def _checked(state: StateDict, key: str, source: str) -> StateDict:
    bad = next((k for k, v in state.items() if not is_tensor(v)), None)
    if bad is not None:
        raise ExportError(f"{source}: '{key}' is not a model state dict "
                          f"({bad!r} is a {type(state[bad]).__name__}, not a tensor)")
    return state
