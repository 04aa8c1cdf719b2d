"""export_release: training checkpoint in, validated release folder out."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig

from ..config import (
    AutoCompression,
    CheckpointCompression,
    CompressionConfig,
    OutputDtype,
    RecordPaths,
    StateChoice,
    StateConfig,
    ValidateConfig,
    ValidateLevel,
)
from ..errors import ExportError, setting, shown
from ..reporting.finetune import solver_config
from ..reporting.manifest import (
    CompressionRecord,
    FileFacts,
    Manifest,
    ReleaseFile,
    SourceRecord,
    StateFacts,
    StateRecord,
    versions,
)
from ..reporting.measure import phase
from ..reporting.model_card import render_model_card
from ..reporting.model_facts import ModelRecord, cfg_of_yaml, compression_facts, lm_facts
from ..reporting.progress import byte_progress
from ..reporting.samples import Clip, write_samples
from ..transformers_format.files import (
    prove_encodec,
    prove_release,
    refusal,
    write_encodec_files,
    write_musicgen_files,
)
from ..transformers_format.mapping import encodec_refusals
from ..untrusted.averaging import average_members, average_state
from ..untrusted.lazy_tensors import cast_state
from ..untrusted.sources import CheckpointSource, dora_argv, resolve_checkpoint
from ..untrusted.states import StateDict, load_solver_checkpoint, select_state, xp_signature
from ..untrusted.training_history import curves, summarize_history
from ..untrusted.xp_config import needed_value, no_resolvers, raw_value, xp_config
from ..validation.audiocraft_checks import (
    FAMILIES,
    import_audiocraft_meanwhile,
    validate_compression_release,
    validate_release,
)
from ..writing.compression import CompressionRelease, resolve_compression
from ..writing.publish import staged_release
from ..writing.recorded_paths import PathRecorder
from ..writing.release_format import (
    COMPRESSION_FILE,
    CURVES_FILE,
    LM_FILE,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    RELEASE_FILES,
    release_package,
    save_package,
    write_json,
    write_text,
)
from ..writing.repairs import loadable_config
from ..writing.torch_zip import WrittenZip

logger = logging.getLogger(__name__)
E = TypeVar("E", bound=Enum)
COMPRESSION_SOLVER = "compression"  # an EnCodec XP: released as compression_state_dict.bin alone


@dataclass
class ExportResult:
    release_dir: Path
    manifest: Manifest = field(repr=False)


@dataclass
class _Selected:
    cfg: DictConfig
    key: str  # checkpoint key of the state, or "average"
    state: StateDict
    xp_sig: str | None
    history: Any  # the checkpoint's per-epoch metrics, as unpickled (checked when read)
    members: list[dict[str, Any]] | None = None  # state=average: the files averaged


def export_release(
    checkpoint: str | Path | CheckpointSource,
    out_dir: str | Path,
    *,
    state: StateConfig | StateChoice | str = StateChoice.auto,
    compression: CompressionConfig | None = None,
    validate: ValidateConfig | ValidateLevel | str | None = None,
    dtype: OutputDtype | str = OutputDtype.keep,
    overwrite: bool = False,
    trust: bool = False,
    samples: bool = True,
    license: str | None = None,
    record_paths: RecordPaths | str = RecordPaths.relative,
    transformers: bool = False,
    text_encoder: str | None = None,
    config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> ExportResult:
    """Export a solver checkpoint to an audiocraft release folder and prove it loads.

    Only the selected state's tensors are read, one storage at a time, so memory stays near
    the size of the largest tensor whatever else the checkpoint holds. An LM (MusicGen,
    AudioGen, MAGNeT) gives ``state_dict.bin`` plus its compression model; an EnCodec XP gives
    ``compression_state_dict.bin`` alone.

    Args:
        checkpoint: a ``checkpoint*.th`` file or an XP folder.
        out_dir: the release folder to create; it appears only once complete and validated.
        state: which weights to release (a :class:`StateChoice`, or a :class:`StateConfig`
            for ``average``).
        compression: which compression model file to ship beside an LM (default
            :class:`AutoCompression`: the one the LM was trained with).
        validate: what to check before publishing (a :class:`ValidateConfig`, or just its
            level; default ``full``).
        dtype: cast the released floating-point tensors (``keep``: as stored).
        overwrite: replace an existing release (only after the new one validated).
        trust: unpickle checkpoints without the allow-list (runs code they carry).
        samples: keep the clips validation made (``samples/``) and draw the training curves.
        license: the model card's license (a Hugging Face Hub license identifier).
        record_paths: ``relative`` records paths relative to the Dora dir (nothing private);
            ``absolute`` as given, with ``xp.cfg`` exactly as the checkpoint holds it.
        transformers: add transformers' format (MusicgenForConditionalGeneration files) and,
            when validating, prove it computes what AudioCraft computes.
        text_encoder: a local folder of the LM's T5 for ``transformers`` (default: its name,
            from the Hugging Face Hub or HF_HOME's cache).
        config: the composed configuration, recorded in the manifest.
        extra_files: text files to publish with the release (name -> content).
    Raises:
        ExportError: with a one-line explanation; nothing is left at ``out_dir``.
    """
    # The library's boundary: strings become the config's enums here, and only here.
    if isinstance(state, StateConfig):
        spec = replace(state, select=_enum(StateChoice, state.select),
                       average_of=_enum(StateChoice, state.average_of))
    else:
        spec = StateConfig(select=_enum(StateChoice, state))
    compression = compression if compression is not None else AutoCompression()
    if isinstance(validate, ValidateConfig):
        validate = replace(validate, level=_enum(ValidateLevel, validate.level))
    else:
        validate = ValidateConfig(level=_enum(ValidateLevel, validate or ValidateLevel.full))
    dtype = _enum(OutputDtype, dtype)
    source = (checkpoint if isinstance(checkpoint, CheckpointSource)
              else resolve_checkpoint(checkpoint))
    recorder = PathRecorder(source.dora_dir,
                            absolute=_enum(RecordPaths, record_paths) is RecordPaths.absolute)
    out_dir = Path(os.path.abspath(os.path.expanduser(out_dir)))  # ".." resolved, links kept
    export_phase: dict[str, Any] = {}
    validation_phase: dict[str, Any] = {}
    unknown = sorted(set(extra_files or {}) - RELEASE_FILES)
    if unknown:
        raise ValueError(f"extra_files: {unknown[0]!r} is not a release file")
    protected = [source.path.parent, *([source.dora_dir] if source.dora_dir else [])]
    with staged_release(out_dir, overwrite, protected) as staging:
        with phase(export_phase):
            sel = _select(source, spec, trust)
            if validate.level is not ValidateLevel.none:
                import_audiocraft_meanwhile()
            solver = needed_value(sel.cfg, "solver", str(source.path))
            weights = sel.state if dtype is OutputDtype.keep else cast_state(
                sel.state, getattr(torch, dtype.value))
            compression_only = solver == COMPRESSION_SOLVER
            cfg, repairs = (sel.cfg, []) if compression_only else loadable_config(sel.cfg)
            shipped = None
            if compression_only:
                if not isinstance(compression, AutoCompression):
                    logger.warning("%s is a compression model (EnCodec) XP: compression=... is "
                                   "ignored", source.path)
                packages = {COMPRESSION_FILE: release_package(weights, cfg)}
            else:
                shipped = resolve_compression(compression, cfg, source, trust=trust)
                packages = {LM_FILE: release_package(weights, cfg)}
                if shipped is not None:
                    packages[COMPRESSION_FILE] = dict(shipped.package)
            recorded = _record_paths(packages, recorder)
            compression_cfg = cfg_of_yaml((packages.get(COMPRESSION_FILE) or {}).get("xp.cfg"))
            if transformers:
                _refuse_transformers(cfg, packages, compression_only, compression_cfg)
            written = _write(staging, packages)
            hf_facts = None
            if transformers and compression_only:
                logger.info("writing transformers' format (EncodecModel)")
                hf_facts = write_encodec_files(staging, cfg, weights)
            elif transformers:
                assert shipped is not None and shipped.state is not None and compression_cfg
                logger.info("writing transformers' format (MusicgenForConditionalGeneration)")
                hf_facts = write_musicgen_files(staging, cfg, weights, compression_cfg,
                                                shipped.state, text_encoder)
                hf_facts["text_encoder"] = recorder.path(hf_facts["text_encoder"])
        manifest = Manifest(
            release=recorder.path(out_dir),
            source=_source_record(source, recorder, solver, sel.xp_sig),
            state=StateRecord(**vars(StateFacts.of(weights)), selected=spec.select.value,
                              key=sel.key, dtype=dtype.value,
                              members=recorder.values(sel.members)),
            compression=_compression_record(shipped, recorder), repairs=repairs,
            files={name: ReleaseFile(w.size, w.sha256) for name, w in written.items()},
            versions=versions(),
            config=recorder.values(dict(config)) if config is not None else None,
            model=_model_facts(cfg, solver, packages.get(COMPRESSION_FILE)),
            training=summarize_history(sel.history, solver), license=license,
            record_paths="absolute" if recorder.absolute else "relative",
            paths_recorded=recorded)
        clips: list[Clip] = []
        with phase(validation_phase), no_resolvers():
            if compression_only:
                manifest.validation = validate_compression_release(staging, weights, validate,
                                                                   written, clips)
            else:
                stand_in = None
                if validate.compression_model and shipped is not None and shipped.pretrained:
                    stand_in = resolve_compression(
                        CheckpointCompression(path=validate.compression_model), cfg, source,
                        trust=trust)
                manifest.validation = validate_release(staging, cfg, weights, shipped,
                                                       validate, written, stand_in, clips)
            if hf_facts is not None and validate.level is not ValidateLevel.none:
                logger.info("proving transformers' model against AudioCraft's")
                hf_facts["proof"] = (prove_encodec(staging, cfg) if compression_only
                                     else prove_release(staging, cfg))
            if manifest.validation.compression_stand_in is not None:
                manifest.validation.compression_stand_in = recorder.path(
                    manifest.validation.compression_stand_in)
        manifest.transformers = hf_facts
        manifest.model = _with_validated_frame_rate(manifest)
        if samples:
            _draw(manifest, clips, sel.history, staging)
        manifest.timings = {"export": export_phase, "validation": validation_phase}
        for name, text in (extra_files or {}).items():
            write_text(text, staging / name)
        manifest.files.update(_other_files(staging, manifest.files))
        logger.info("writing the model card and the manifest")
        write_text(render_model_card(manifest), staging / MODEL_CARD_FILE)
        write_json(manifest.to_json(), staging / MANIFEST_FILE)
    logger.info("export %.2fs (peak RSS %.0f MiB), validate=%s %.2fs (peak RSS %.0f MiB); "
                "process peak RSS %.0f MiB", export_phase["seconds"],
                export_phase["phase_peak_rss_bytes"] / 2**20, validate.level.value,
                validation_phase["seconds"], validation_phase["phase_peak_rss_bytes"] / 2**20,
                validation_phase["peak_rss_bytes"] / 2**20)
    logger.info("release written to %s", out_dir)
    return ExportResult(out_dir, manifest)


def _enum(kind: type[E], value: E | str) -> E:
    try:
        return kind(value)
    except ValueError as exc:
        raise ExportError(f"unknown {kind.__name__} {shown(value)} (known: "
                          f"{', '.join(m.value for m in kind)})") from exc


def _select(source: CheckpointSource, spec: StateConfig, trust: bool) -> _Selected:
    """The config and the selected state (still on disk) of the checkpoint."""
    logger.info("reading %s", source.path)
    pkg = load_solver_checkpoint(source.path, trust=trust)
    cfg = xp_config(pkg, str(source.path))
    if spec.select is StateChoice.average:
        members = average_members(source.path.parent, spec.last_k, spec.epochs)
        state, facts = average_state(members, spec.average_of, trust=trust)
        selected = _Selected(cfg, "average", state, xp_signature(pkg), pkg.get("history"),
                             facts)
    else:
        key, state = select_state(pkg, spec.select, source=str(source.path))
        selected = _Selected(cfg, key, state, xp_signature(pkg), pkg.get("history"))
    logger.info("exporting %s (solver %s): %d tensors", selected.key,
                shown(raw_value(cfg, "solver")), len(selected.state))
    return selected


def _write(staging: Path, packages: Mapping[str, Mapping[str, Any]]) -> dict[str, WrittenZip]:
    """Write the release files into ``staging``; return what was written."""
    total = sum(StateFacts.of(p["best_state"]).bytes for p in packages.values()
                if "best_state" in p)
    advance, close = byte_progress(total, "writing release")
    files = {}
    try:
        for name, package in packages.items():
            files[name] = save_package(package, staging / name, advance)
    finally:
        close()
    return files


def _other_files(staging: Path, hashed: Mapping[str, ReleaseFile]) -> dict[str, ReleaseFile]:
    """Bytes and sha256 of the files not hashed as they were written (samples, pictures,
    transformers' files, the config), by their path in the release; the card and the manifest,
    written last, describe the others."""
    found = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        name = path.relative_to(staging).as_posix()
        if name not in hashed and name not in (MODEL_CARD_FILE, MANIFEST_FILE):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            found[name] = ReleaseFile(path.stat().st_size, digest.hexdigest())
    return found


def _refuse_transformers(cfg: DictConfig, packages: Mapping[str, Mapping[str, Any]],
                         compression_only: bool, compression_cfg: DictConfig | None) -> None:
    """Before anything is written: one line saying why transformers' format cannot hold it."""
    if compression_only:
        problem = "; ".join(encodec_refusals(cfg)) or None
    else:
        problem = refusal(cfg, packages.get(COMPRESSION_FILE), compression_cfg)
    if problem:
        raise ExportError("cannot add transformers' format "
                          f"({setting('output.transformers', True)}): {problem}")


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


def _source_record(source: CheckpointSource, recorder: PathRecorder, solver: Any,
                   xp_sig: str | None) -> SourceRecord:
    argv = dora_argv(source.path.parent)
    return SourceRecord(**_recorded_facts(source.path, recorder), name=source.name,
                        solver=solver, xp_sig=xp_sig,
                        argv=recorder.overrides(argv) if argv is not None else None,
                        solver_config=solver_config(argv) if argv is not None else None)


def _recorded_facts(path: Path, recorder: PathRecorder) -> dict[str, Any]:
    return {**vars(FileFacts.of(path)), "path": recorder.path(path)}


def _model_facts(cfg: DictConfig, solver: Any,
                 compression_package: Mapping[str, Any] | None) -> ModelRecord:
    if solver == COMPRESSION_SOLVER:
        return compression_facts(cfg)
    family = FAMILIES.get(solver) if isinstance(solver, str) else None
    return lm_facts(cfg, family.model_class if family else None,
                    cfg_of_yaml((compression_package or {}).get("xp.cfg")))


def _with_validated_frame_rate(manifest: Manifest) -> ModelRecord | None:
    """The model facts, with the frame rate a loaded compression model reported (a
    //pretrained/ one has no config in the release to read it from)."""
    if manifest.model is None or manifest.validation is None:
        return manifest.model
    rates = [c["frame_rate"] for c in manifest.validation.checks if "frame_rate" in c]
    return manifest.model.with_frame_rate(rates[0] if rates else None)


def _draw(manifest: Manifest, clips: list[Clip], history: Any, staging: Path) -> None:
    """Keep the clips validation made and draw the training curves, into the release."""
    if clips:
        logger.info("keeping %d clip(s) with their spectrograms in samples/", len(clips))
        manifest.samples = write_samples(clips, staging)
    drawn = curves(history)
    if drawn:
        from ..reporting.figures import training_curves_png

        logger.info("drawing the training curves (%s)", ", ".join(drawn))
        training = manifest.training
        training_curves_png(drawn, training.best_epoch if training else None,
                            f"{manifest.source.name} ({manifest.source.solver})",
                            staging / CURVES_FILE)
        manifest.curves = CURVES_FILE


def _compression_record(shipped: CompressionRelease | None,
                        recorder: PathRecorder) -> CompressionRecord | None:
    if shipped is None:
        return None
    return CompressionRecord(
        reference=recorder.path(shipped.reference), pretrained=shipped.pretrained,
        source=None if shipped.source is None else FileFacts(
            **_recorded_facts(shipped.source, recorder)),
        key=shipped.state_key,
        state=None if shipped.state is None else StateFacts.of(shipped.state))
