"""mode=inspect: what a training checkpoint holds, without exporting anything."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from ..config import ExportConfig, StateChoice
from ..errors import ExportError, first_line, shown
from ..families import COMPRESSION_SOLVER, family_of
from ..reporting.manifest import FileFacts, StateFacts
from ..untrusted.averaging import epoch_checkpoints
from ..untrusted.safe_load import MAX_NESTING
from ..untrusted.sources import CheckpointSource, WeightsSource, fsdp_shards
from ..untrusted.states import STATE_KEYS, load_solver_checkpoint, select_state, xp_signature
from ..untrusted.weights_files import lm_layout, read_weights
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
        "get_pretrained": _get_pretrained_verdict(cfg),
        "transformers": _transformers_verdict(cfg, source, trust),
        "epoch_checkpoints": [p.name for p in epoch_checkpoints(xp_dir).values()],
        "fsdp_shards": [p.name for p in fsdp_shards(source.path)],
    }


def inspect_weights(source: WeightsSource, spec: ExportConfig) -> dict[str, Any]:
    """Describe weights given with input=weights: what they are, what model their shapes
    make, and which base they need (whether input.base fits them, when given)."""
    from ..pipeline.weights import select_weights
    from ..transformers_format.lora import adapter_facts

    weights = read_weights(source.path, trust=spec.input.trust)
    layout = lm_layout(weights.state)
    if source.base:
        try:
            selection = select_weights(source, spec)
            assert selection.weights is not None
            fits = (f"yes: every tensor fits the base's; EnCodec "
                    f"{selection.weights.encodec}")
        except ExportError as exc:
            fits = f"no: {exc}"
    else:
        fits = "unknown: no input.base given"
    return {
        "weights": vars(FileFacts.of(source.path)),
        "kind": weights.kind,
        "wrapper": weights.wrapper,
        "state": vars(StateFacts.of(weights.state)),
        "layout": layout,
        "adapter": adapter_facts(weights.config or {}) if weights.kind == "peft adapter"
        else None,
        "needs": _needed_base(weights.kind, layout),
        "base": source.base,
        "fits_base": fits,
    }


def _needed_base(kind: str, layout: Mapping[str, Any] | None) -> str:
    """Which base ``input.base`` must name for weights of this kind and layout."""
    what = "an AudioCraft release folder, a training checkpoint or XP folder, or a Hub name"
    if kind == "peft adapter":
        return (f"input.base: the adapter's own base ({what}), whose transformers model it "
                "is merged into")
    if layout is None:
        return f"input.base: {what} whose LM has these names and shapes"
    return (f"input.base: {what} of an LM with {layout['codebooks']} codebooks of "
            f"{layout['card']} entries, width {layout['dim']} and {layout['layers']} layers"
            + (", mapped from transformers' names" if layout["names"] == "transformers"
               else ""))


def format_weights_inspection(info: Mapping[str, Any], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(info, indent=2)
    facts, state = info["weights"], info["state"]
    what = info["kind"] + (f" (under {info['wrapper']!r})" if info["wrapper"] else "")
    layout = info["layout"]
    lines = [f"weights      {facts['path']} ({facts['bytes'] / 2**20:.1f} MiB, "
             f"{facts['mtime']})",
             f"kind         {what}: {state['tensors']} tensors, {state['parameters']:,} "
             f"parameters",
             "layout       " + (f"{layout['names']} names"
                                + (f" prefixed {layout['prefix']!r}" if layout["prefix"]
                                   else "")
                                + f"; {layout['codebooks']} codebooks of {layout['card']}, "
                                  f"width {layout['dim']}, {layout['layers']} layers"
                                if layout else "no codebook embeddings")]
    if info["adapter"]:
        lines.append("adapter      " + ", ".join(f"{k}={v}" for k, v in info["adapter"].items()))
    lines += [f"needs        {info['needs']}",
              f"base         {info['base'] or '-'}",
              f"fits         {info['fits_base']}"]
    return "\n".join(lines)


def _get_pretrained_verdict(cfg: DictConfig | None) -> str:
    """Whether stock get_pretrained loads this model's release, or why not (one line)."""
    if cfg is None:
        return "unknown: no readable xp.cfg"
    family = family_of(raw_value(cfg, "solver"))
    if family.model_class is None:
        return f"unknown: solver {shown(family.solver)}"
    refusal = family.get_pretrained_refusal(raw_value(cfg, "dataset.segment_duration"))
    return f"no: {refusal}" if refusal else f"yes ({family.model_class}.get_pretrained)"


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
              f"get_pretrained {info['get_pretrained']}",
              f"transformers {info['transformers']}",
              f"epoch files  {', '.join(info['epoch_checkpoints']) or 'none'}",
              f"FSDP shards  {', '.join(info['fsdp_shards']) or 'none'}"]
    return "\n".join(lines)


def _metrics(last: Mapping[str, Any]) -> str:
    return "; ".join(f"{stage} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in metrics.items())
                     for stage, metrics in last.items() if isinstance(metrics, Mapping))
