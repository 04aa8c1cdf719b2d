"""Decide and build the compression model file (compression_state_dict.bin) shipped with an
LM: AudioCraft's name for the EnCodec tokenizer the LM was trained on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import (
    AutoCompression,
    CheckpointCompression,
    CompressionConfig,
    NoCompression,
    PretrainedCompression,
    StateChoice,
)
from ..errors import ExportError, setting, shown
from ..untrusted.sources import (
    PRETRAINED_PREFIX,
    SIG_PREFIX,
    CheckpointSource,
    default_dora_dir,
    resolve_checkpoint,
    resolve_signature,
)
from ..untrusted.states import StateDict, checked_state, load_solver_checkpoint, select_state
from ..untrusted.xp_config import needed_value, xp_config
from .release_format import pointer_package, release_package

logger = logging.getLogger(__name__)


@dataclass
class CompressionRelease:
    """The compression model part of a release."""

    package: dict[str, Any]  # the content of compression_state_dict.bin
    reference: str  # what it was resolved from: //pretrained/NAME, //sig/SIG or a path
    source: Path | None = None  # the file read, if any
    state_key: str | None = None  # the checkpoint key exported, for a training checkpoint
    state: StateDict | None = None  # the exported weights, kept to verify the reload

    @property
    def pretrained(self) -> str | None:
        return self.package.get("pretrained")


def resolve_compression(spec: CompressionConfig, lm_cfg: DictConfig, lm_source: CheckpointSource,
                        trust: bool = False) -> CompressionRelease | None:
    """Build the compression model file's content for ``spec``; None for ``compression=none``."""
    if isinstance(spec, NoCompression):
        return None
    if isinstance(spec, PretrainedCompression):
        return CompressionRelease(pointer_package(spec.name), PRETRAINED_PREFIX + spec.name)
    if isinstance(spec, CheckpointCompression):
        ref = spec.path
    elif isinstance(spec, AutoCompression):
        ref = needed_value(lm_cfg, "compression_model_checkpoint", str(lm_source.path))
        if not ref or not isinstance(ref, str):
            raise ExportError(
                f"{lm_source.path}: xp.cfg has no compression_model_checkpoint; choose "
                f"{setting('compression.name', '...')}, {setting('compression.path', '...')} "
                f"or {setting('compression=none')}")
    else:
        raise TypeError(f"unknown compression spec {spec!r}")
    return _from_reference(ref, lm_source, trust)


def _from_reference(ref: str, lm_source: CheckpointSource, trust: bool) -> CompressionRelease:
    if ref.startswith(PRETRAINED_PREFIX):
        return CompressionRelease(pointer_package(ref[len(PRETRAINED_PREFIX):]), ref)
    if ref.startswith(SIG_PREFIX):
        dora_dir = lm_source.dora_dir or default_dora_dir()
        if dora_dir is None:
            raise ExportError(
                f"the compression model is {ref}, but {lm_source.path} is not inside a Dora dir "
                "(<dora_dir>/xps/<sig>/) and AUDIOCRAFT_DORA_DIR is unset; set it, or pass "
                f"{setting('compression.path', '<EnCodec checkpoint>')}")
        try:
            source = resolve_signature(ref, dora_dir)
        except ExportError as exc:
            raise ExportError(f"cannot resolve the compression model {ref}: {exc}") from exc
    elif ref.startswith("//"):
        raise ExportError(f"cannot resolve the compression model reference {ref!r} outside the "
                          f"cluster it was trained on; pass {setting('compression.path', '...')}")
    else:
        try:
            source = resolve_checkpoint(ref)
        except ExportError as exc:
            raise ExportError(f"cannot resolve the compression model {ref}: {exc}") from exc
    return _from_file(source.path, ref, trust)


def _from_file(path: Path, ref: str, trust: bool) -> CompressionRelease:
    pkg = load_solver_checkpoint(path, trust=trust)
    if pkg.get("exported") is True:  # already a release file: ship what it holds
        return _from_release_file(pkg, path, ref)
    source = f"compression model checkpoint {path}"
    cfg = xp_config(pkg, source)
    solver = needed_value(cfg, "solver", source)
    if solver not in (None, "compression"):
        raise ExportError(f"{source} comes from solver {shown(solver)}, not an EnCodec "
                          "(compression) XP")
    key, state = select_state(pkg, StateChoice.auto, source=source)
    return CompressionRelease(release_package(state, cfg), ref, source=path, state_key=key,
                              state=state)


def _from_release_file(pkg: dict[str, Any], path: Path, ref: str) -> CompressionRelease:
    """An exported compression_state_dict.bin, rebuilt from its four known entries only, so
    that nothing else the file holds reaches the release."""
    pretrained = pkg.get("pretrained")
    if pretrained is not None:
        if type(pretrained) is not str:
            raise ExportError(f"exported compression model {path}: its 'pretrained' entry is "
                              "not a name")
        return CompressionRelease(pointer_package(pretrained), ref, source=path)
    state, cfg_yaml, version = pkg.get("best_state"), pkg.get("xp.cfg"), pkg.get("version")
    if not isinstance(state, dict) or type(cfg_yaml) is not str or type(version) is not str:
        raise ExportError(f"exported compression model {path} lacks the release layout "
                          "(best_state, xp.cfg as YAML text, version)")
    state = checked_state(dict(state), "best_state", f"exported compression model {path}")
    package = {"best_state": state, "xp.cfg": cfg_yaml, "version": version, "exported": True}
    return CompressionRelease(package, ref, source=path, state_key="best_state", state=state)
