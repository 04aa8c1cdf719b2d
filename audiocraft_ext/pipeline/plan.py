"""The release plan: every decision about a release, made once before anything is written.

A plan says what the checkpoint is (its family), which weights are released, which files are
written with which content (paths recorded, config repaired), which compression model ships
beside an LM, and whether transformers' format can hold it. Writing, validation and the
description of the release read the plan; none of them decides again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import (
    AutoCompression,
    CheckpointCompression,
    ExportConfig,
    OutputDtype,
    RecordPaths,
    StateChoice,
    StateConfig,
    ValidateLevel,
)
from ..errors import ExportError, setting, shown
from ..families import Family, family_of
from ..onnx_format.files import refusal as onnx_refusal
from ..reporting.manifest import StateFacts, WeightsRecord
from ..reporting.model_facts import cfg_of_yaml
from ..transformers_format.files import refusal
from ..transformers_format.mapping import encodec_refusals
from ..untrusted.architecture import check_architecture, check_encodec_architecture
from ..untrusted.averaging import average_members, average_state
from ..untrusted.lazy_tensors import cast_state
from ..untrusted.sources import CheckpointSource
from ..untrusted.states import StateDict, load_solver_checkpoint, select_state, xp_signature
from ..untrusted.xp_config import needed_value, raw_value, xp_config
from ..writing.compression import CompressionRelease, resolve_compression
from ..writing.recorded_paths import PathRecorder
from ..writing.release_format import COMPRESSION_FILE, LM_FILE, release_package
from ..writing.repairs import loadable_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """What was read from the checkpoint: its config and the selected state (still on disk)."""

    cfg: DictConfig  # xp.cfg as the checkpoint holds it
    key: str  # checkpoint key of the state, or "average"
    state: StateDict
    xp_sig: str | None
    history: Any  # the checkpoint's per-epoch metrics, as unpickled (checked when read)
    members: list[dict[str, Any]] | None = None  # state=average: the files averaged
    weights: WeightsRecord | None = None  # input=weights: where the weights came from
    # input=weights: the compression model resolved against its base (the base's, or the chosen)
    compression: CompressionRelease | None = None


@dataclass(frozen=True)
class ReleasePlan:
    """Everything decided about one release; steps read it, none changes it."""

    source: CheckpointSource
    out_dir: Path
    spec: ExportConfig
    solver: Any  # xp.cfg's solver, as the checkpoint holds it
    family: Family  # decided from the solver, once
    selection: Selection
    weights: StateDict  # the released tensors (cast as output.dtype says)
    cfg: DictConfig  # the released xp.cfg, repaired for stock audiocraft (an LM's)
    repairs: tuple[str, ...]
    compression: CompressionRelease | None  # shipped beside an LM
    stand_in: CompressionRelease | None  # validates in place of a //pretrained/ pointer
    packages: Mapping[str, Mapping[str, Any]]  # file name -> its content, paths recorded
    paths_recorded: tuple[str, ...]  # "<file>: <xp.cfg key>" of each path recorded
    recorder: PathRecorder

    @property
    def compression_cfg(self) -> DictConfig | None:
        """The shipped compression model's config (none for a //pretrained/ pointer)."""
        return cfg_of_yaml((self.packages.get(COMPRESSION_FILE) or {}).get("xp.cfg"))


def select(source: CheckpointSource, spec: StateConfig, trust: bool) -> Selection:
    """Read ``source``'s config and select the state to release (its tensors stay on disk)."""
    logger.info("reading %s", source.path)
    pkg = load_solver_checkpoint(source.path, trust=trust)
    cfg = xp_config(pkg, str(source.path))
    if spec.select is StateChoice.average:
        members = average_members(source.path.parent, spec.last_k, spec.epochs)
        state, facts = average_state(members, spec.average_of, trust=trust)
        selection = Selection(cfg, "average", state, xp_signature(pkg), pkg.get("history"),
                              facts)
    else:
        key, state = select_state(pkg, spec.select, source=str(source.path))
        selection = Selection(cfg, key, state, xp_signature(pkg), pkg.get("history"))
    logger.info("exporting %s (solver %s): %d tensors", selection.key,
                shown(raw_value(cfg, "solver")), len(selection.state))
    return selection


def plan_release(source: CheckpointSource, spec: ExportConfig, out_dir: Path,
                 selection: Selection) -> ReleasePlan:
    """Decide the release of ``selection``; raise ExportError for what cannot be released."""
    solver = needed_value(selection.cfg, "solver", str(source.path))
    family = family_of(solver)
    dtype = spec.output.dtype
    weights = selection.state if dtype is OutputDtype.keep else cast_state(
        selection.state, getattr(torch, dtype.value))
    cfg, repairs = loadable_config(selection.cfg) if family.is_lm else (selection.cfg, [])
    # before any model is built from the config: does it describe the state?
    check_architecture(family, cfg, selection.state, str(source.path))
    compression = _shipped_compression(family, spec, cfg, source, selection)
    _refuse_unloadable(family, cfg, spec, full=compression is not None)
    if spec.validate.level is not ValidateLevel.none:
        _check_melody_needs(cfg)
    if compression is not None and compression.state is not None:  # the EnCodec beside it
        check_encodec_architecture(cfg_of_yaml(compression.package.get("xp.cfg")),
                                   compression.state, str(compression.source))
    packages: dict[str, dict[str, Any]] = {
        (LM_FILE if family.is_lm else COMPRESSION_FILE): release_package(weights, cfg)}
    if compression is not None:
        packages[COMPRESSION_FILE] = dict(compression.package)
    recorder = PathRecorder(source.dora_dir,
                            absolute=spec.output.record_paths is RecordPaths.absolute)
    recorded = _record_paths(packages, recorder)
    if spec.output.transformers:
        problem = transformers_refusal(family, cfg, packages.get(COMPRESSION_FILE))
        if problem:
            raise ExportError("cannot add transformers' format "
                              f"({setting('output.transformers', True)}): {problem}")
    if spec.output.onnx:
        problem = onnx_refusal(family, cfg, spec.output.transformers,
                               StateFacts.of(weights).parameters)
        if problem:
            raise ExportError(f"cannot add ONNX ({setting('output.onnx', True)}): {problem}")
    elif spec.output.onnx_quantize:
        raise ExportError(f"{setting('output.onnx_quantize', True)} quantizes the ONNX graphs: "
                          f"add {setting('output.onnx', True)}")
    frames = spec.validate.transformers_frames
    if frames is not None and frames < 1:
        raise ExportError(f"{setting('validate.transformers_frames', frames)}: the transformers "
                          "proof needs at least 1 frame (unset: the generation length)")
    stand_in, local = None, spec.validate.compression_model
    if local and spec.validate.level is not ValidateLevel.none and compression is not None \
            and compression.pretrained:
        stand_in = resolve_compression(CheckpointCompression(path=local), cfg, source,
                                       trust=spec.input.trust)
    return ReleasePlan(source, out_dir, spec, solver, family, selection, weights, cfg,
                       tuple(repairs), compression, stand_in, packages, tuple(recorded),
                       recorder)


def _refuse_unloadable(family: Family, cfg: DictConfig, spec: ExportConfig, full: bool) -> None:
    """A model stock get_pretrained refuses (trained on segments no longer than its
    extend_stride): refused before anything is written when validation would run
    get_pretrained (validate=full with a compression model), said once otherwise."""
    refusal = family.get_pretrained_refusal(raw_value(cfg, "dataset.segment_duration"))
    if refusal is None:
        return
    if full and spec.validate.level is ValidateLevel.full:
        raise ExportError(f"{refusal}; {setting('validate', 'load')} exports it without the "
                          "get_pretrained check")
    logger.warning("%s", refusal)


# demucs' htdemucs, which AudioCraft's melody conditioner separates its melody prompt with
# (demucs/remote/files.txt); torch.hub reads it from its cache before any download
HTDEMUCS_FILE = "955717e8-8726e21a.th"


def _check_melody_needs(cfg: DictConfig) -> None:
    """A MusicGen-melody (a chroma_stem conditioner) is built by validation only with demucs
    and its htdemucs weights: without demucs, refused before anything is written; without the
    weights in torch.hub's cache, said once (audiocraft downloads them on first use)."""
    conditioners = raw_value(cfg, "conditioners")
    names = [str(n) for n in conditioners] if isinstance(conditioners, DictConfig) else []
    melody = [n for n in names if raw_value(cfg, f"conditioners.{n}.model") == "chroma_stem"]
    if not melody:
        return
    what = f"its melody conditioner ({shown(melody[0])}: chroma_stem)"
    try:
        import demucs  # noqa: F401  (whether it is installed: audiocraft imports it to build)
    except ImportError as exc:
        raise ExportError(
            f"validation builds this MusicGen-melody, and {what} separates the melody with "
            "demucs, which is not installed here: pip install 'audiocraft-ext[melody]' "
            f"(demucs 4.0.1), or use {setting('validate', 'none')}, the one level that does "
            "not build the model") from exc
    weights = Path(torch.hub.get_dir()) / "checkpoints" / HTDEMUCS_FILE
    if not weights.is_file():
        logger.warning(
            "%s needs demucs' htdemucs weights, which are not in torch.hub's cache (%s, under "
            "TORCH_HOME): audiocraft downloads them from dl.fbaipublicfiles.com when "
            "validation builds the model; offline, put the file there or use %s", what,
            weights, setting("validate", "none"))


def _shipped_compression(family: Family, spec: ExportConfig, cfg: DictConfig,
                         source: CheckpointSource,
                         selection: Selection) -> CompressionRelease | None:
    """The compression model file beside an LM (input=weights: the one its selection
    resolved, the base's or the chosen one, with an EnCodec the weights carry); an EnCodec XP
    is its own."""
    if family.is_lm and selection.compression is not None:
        return selection.compression
    if family.is_lm:
        return resolve_compression(spec.compression, cfg, source, trust=spec.input.trust)
    if not isinstance(spec.compression, AutoCompression):
        logger.warning("%s is a compression model (EnCodec) XP: compression=... is ignored",
                       source.path)
    return None


def transformers_refusal(family: Family, cfg: DictConfig,
                         compression_package: Mapping[str, Any] | None) -> str | None:
    """Why transformers' format cannot hold this release (one line), or None: the one verdict,
    shared by ``output.transformers=true`` and ``mode=inspect``."""
    if not family.is_lm:
        return "; ".join(encodec_refusals(cfg)) or None
    return refusal(cfg, compression_package,
                   cfg_of_yaml((compression_package or {}).get("xp.cfg")))


def transformers_verdict(source: CheckpointSource, cfg: DictConfig, trust: bool) -> str | None:
    """:func:`transformers_refusal` for the release ``source`` gives with the default options."""
    family = family_of(raw_value(cfg, "solver"))
    if not family.is_lm:
        return transformers_refusal(family, cfg, None)
    lm_cfg = loadable_config(cfg)[0]
    shipped = resolve_compression(AutoCompression(), lm_cfg, source, trust=trust)
    return transformers_refusal(family, lm_cfg, shipped.package if shipped else None)


def _record_paths(packages: Mapping[str, dict[str, Any]], recorder: PathRecorder) -> list[str]:
    """Record the paths of each package's xp.cfg as ``recorder`` says; the keys changed."""
    recorded = []
    for name, package in packages.items():
        if isinstance(package.get("xp.cfg"), str):
            package["xp.cfg"], changed = recorder.yaml_config(package["xp.cfg"])
            recorded += [f"{name}: {key}" for key in changed]
    if recorded:
        logger.info("recorded %d path(s) of xp.cfg relative to the Dora dir "
                    "(output.record_paths=absolute keeps them)", len(recorded))
    return recorded
