"""mode=inspect: what a training checkpoint holds, without exporting anything."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from ..config import StateChoice
from ..errors import ExportError, first_line, shown
from ..families import COMPRESSION_SOLVER
from ..reporting.manifest import FileFacts, StateFacts
from ..untrusted.averaging import epoch_checkpoints
from ..untrusted.safe_load import MAX_NESTING
from ..untrusted.sources import CheckpointSource, fsdp_shards
from ..untrusted.states import STATE_KEYS, load_solver_checkpoint, select_state, xp_signature
from ..untrusted.xp_config import raw_value, xp_config


def inspect_checkpoint(source: CheckpointSource, trust: bool = False) -> dict[str, Any]:
    """Describe ``source``: solver, XP, history, each state, compression model and what
    state=auto picks."""
    pkg = load_solver_checkpoint(source.path, trust=trust)
    try:
        cfg: DictConfig | None = xp_config(pkg, str(source.path))
    except ExportError:
        cfg = None  # described as such: inspection reports what is there
    history: list[Any] = pkg["history"] if isinstance(pkg.get("history"), list) else []
    states: dict[str, Any] = {}
    for choice, key in STATE_KEYS.items():
        if key not in pkg:
            states[key] = "absent"
        elif pkg[key] is None or (isinstance(pkg[key], dict) and not pkg[key]):
            states[key] = "none" if pkg[key] is None else "empty"
        else:
            try:
                states[key] = vars(StateFacts.of(select_state(pkg, choice, str(source.path))[1]))
            except ExportError as exc:
                states[key] = f"unusable: {exc}"
    try:
        auto = select_state(pkg, StateChoice.auto, str(source.path))[0]
    except ExportError as exc:
        auto = f"nothing ({exc})"
    xp_dir = source.path.parent
    return {
        "checkpoint": vars(FileFacts.of(source.path)),
        "keys": list(pkg),
        "solver": raw_value(cfg, "solver") if cfg is not None else None,
        "xp_sig": xp_signature(pkg),
        "epochs": len(history),
        "last_metrics": _plain(history[-1]) if history else None,
        "states": states,
        "state_auto": auto,
        "compression_model_checkpoint": raw_value(cfg, "compression_model_checkpoint")
        if cfg is not None else None,
        "transformers": _transformers_verdict(cfg, source, trust),
        "epoch_checkpoints": [p.name for p in epoch_checkpoints(xp_dir).values()],
        "fsdp_shards": [p.name for p in fsdp_shards(source.path)],
    }


def _transformers_verdict(cfg: DictConfig | None, source: CheckpointSource,
                          trust: bool) -> str:
    """Whether output.transformers=true can write this checkpoint, or why not (one line)."""
    from ..pipeline.plan import transformers_verdict

    if cfg is None:
        return "unknown: no readable xp.cfg"
    try:
        problem = transformers_verdict(source, cfg, trust)
    except Exception as exc:  # noqa: BLE001  (inspection reports what it can, never fails on it)
        return f"unknown: {exc if isinstance(exc, ExportError) else first_line(exc)}"
    if problem is not None:
        return f"no: {problem}"
    return "yes (EncodecModel)" if raw_value(cfg, "solver") == COMPRESSION_SOLVER else "yes"


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-ready metrics. Only plain containers are walked, and no deeper than the pickle scan
    allows (lists filled through the memo can nest further than the scan sees): reading a
    DictConfig resolves its interpolations, and anything else from the file is named by its
    type, not rendered."""
    if depth > MAX_NESTING:
        return f"<nested deeper than {MAX_NESTING}>"
    if isinstance(value, dict):
        return {shown(k, 80) if not isinstance(k, str) else k: _plain(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return f"<{type(value).__name__}>"


def format_inspection(info: Mapping[str, Any], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(info, indent=2)
    ckpt = info["checkpoint"]
    lines = [f"checkpoint   {ckpt['path']} ({ckpt['bytes'] / 2**20:.1f} MiB, {ckpt['mtime']})",
             f"solver       {info['solver']}    XP {info['xp_sig']}",
             f"epochs       {info['epochs']}"
             + (f"; last: {_metrics(info['last_metrics'])}" if info["last_metrics"] else ""),
             "states"]
    for key, facts in info["states"].items():
        if isinstance(facts, dict):
            dtypes = ", ".join(f"{n} {d}" for d, n in facts["dtypes"].items())
            facts = (f"{facts['tensors']} tensors, {facts['parameters']:,} parameters, "
                     f"{facts['bytes'] / 2**20:.1f} MiB ({dtypes})")
        lines.append(f"  {key:<16} {facts}")
    lines += [f"state=auto   exports {info['state_auto']}",
              f"compression  {info['compression_model_checkpoint']}",
              f"transformers {info['transformers']}",
              f"epoch files  {', '.join(info['epoch_checkpoints']) or 'none'}",
              f"FSDP shards  {', '.join(info['fsdp_shards']) or 'none'}"]
    return "\n".join(lines)


def _metrics(last: Mapping[str, Any]) -> str:
    return "; ".join(f"{stage} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in metrics.items())
                     for stage, metrics in last.items() if isinstance(metrics, Mapping))
