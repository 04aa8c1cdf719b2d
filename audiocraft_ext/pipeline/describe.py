"""Describing a validated release: its samples and figures, the manifest (built once, from the
plan and the results), the model card and the hashes of every file."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import first_line, one_line, shown
from ..reporting.finetune import solver_config
from ..reporting.manifest import (
    CompressionRecord,
    FileFacts,
    Manifest,
    ReleaseFile,
    SourceRecord,
    StateFacts,
    StateRecord,
    WeightsRecord,
    versions,
)
from ..reporting.model_card import render_model_card
from ..reporting.model_facts import ModelRecord, model_facts
from ..reporting.samples import write_samples
from ..untrusted.sources import dora_argv
from ..untrusted.training_history import TrainingSummary, curves, summarize_history
from ..writing.recorded_paths import PathRecorder
from ..writing.release_format import (
    CURVES_FILE,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    write_json,
    write_text,
)
from .plan import ReleasePlan
from .validate import Validated
from .write import Written

logger = logging.getLogger(__name__)


def describe_release(plan: ReleasePlan, staging: Path, written: Written, validated: Validated,
                     timings: dict[str, dict[str, Any]], config: Mapping[str, Any] | None,
                     extra_files: Mapping[str, str]) -> Manifest:
    """Write the samples, the curves, ``extra_files``, the model card and ``export.json`` into
    ``staging``; return the manifest they describe."""
    spec, recorder = plan.spec, plan.recorder
    training = summarize_history(plan.selection.history, plan.solver)
    samples, drawn = _draw(plan, validated, training, staging) if spec.output.samples \
        else ([], None)
    for name, text in extra_files.items():
        write_text(text, staging / name)
    files = {name: ReleaseFile(w.size, w.sha256) for name, w in written.files.items()}
    manifest = Manifest(
        release=recorder.path(plan.out_dir), source=_source_record(plan),
        state=StateRecord(**vars(StateFacts.of(plan.weights)), selected=spec.state.select.value,
                          key=plan.selection.key, dtype=spec.output.dtype.value,
                          members=recorder.values(plan.selection.members)),
        compression=_compression_record(plan), repairs=list(plan.repairs),
        files={**files, **_other_files(staging, files)}, versions=versions(),
        config=recorder.values(dict(config)) if config is not None else None,
        validation=validated.report, timings=timings,
        model=_model(plan, validated), training=training, samples=samples, curves=drawn,
        license=spec.output.license, record_paths=spec.output.record_paths.value,
        paths_recorded=list(plan.paths_recorded),
        transformers=dict(validated.transformers) if validated.transformers else None)
    logger.info("writing the model card and the manifest")
    write_text(render_model_card(manifest), staging / MODEL_CARD_FILE)
    write_json(manifest.to_json(), staging / MANIFEST_FILE)
    return manifest


def _model(plan: ReleasePlan, validated: Validated) -> ModelRecord:
    """The model's facts, with the frame rate a loaded compression model reported when its
    config is not in the release (a //pretrained/ pointer)."""
    facts = model_facts(plan.cfg, plan.family, plan.compression_cfg, plan.recorder.path)
    return facts.with_frame_rate(validated.report.frame_rate)


def _draw(plan: ReleasePlan, validated: Validated, training: TrainingSummary | None,
          staging: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Keep the clips validation made and draw the training curves; (samples, curves file)."""
    samples = []
    if validated.clips:
        logger.info("keeping %d clip(s) with their spectrograms in samples/",
                    len(validated.clips))
        samples = write_samples(validated.clips, staging)
    drawn = curves(plan.selection.history)
    if not drawn:
        return samples, None
    from ..reporting.figures import training_curves_png  # matplotlib: only when drawing

    logger.info("drawing the training curves (%s)", ", ".join(drawn))
    try:
        training_curves_png(drawn, training.best_epoch if training else None,
                            f"{one_line(plan.source.name, 80)} ({shown(plan.solver, 40)})",
                            staging / CURVES_FILE)
    except (ValueError, OverflowError, RuntimeError) as exc:  # the history is data: no curves
        logger.warning("training curves not drawn: the history's values cannot be plotted "
                       "(%s)", first_line(exc))
        (staging / CURVES_FILE).unlink(missing_ok=True)
        return samples, None
    return samples, CURVES_FILE


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


def _source_record(plan: ReleasePlan) -> SourceRecord:
    source, recorder = plan.source, plan.recorder
    argv = dora_argv(source.path.parent)
    return SourceRecord(**_recorded_facts(source.path, recorder), name=source.name,
                        solver=plan.solver, xp_sig=plan.selection.xp_sig,
                        argv=recorder.overrides(argv) if argv is not None else None,
                        solver_config=solver_config(argv) if argv is not None else None,
                        weights=_weights_record(plan))


def _weights_record(plan: ReleasePlan) -> WeightsRecord | None:
    """input=weights: where they came from, the base recorded as the other paths are."""
    record = plan.selection.weights
    if record is None:
        return None
    base = record.base if not Path(record.base).expanduser().exists() \
        else plan.recorder.path(Path(record.base).expanduser().resolve())
    # the adapter's own base_model_name_or_path may name a folder of the trainer's machine
    return dataclasses.replace(record, base=base, adapter=plan.recorder.values(record.adapter))


def _recorded_facts(path: Path, recorder: PathRecorder) -> dict[str, Any]:
    return {**vars(FileFacts.of(path)), "path": recorder.path(path)}


def _compression_record(plan: ReleasePlan) -> CompressionRecord | None:
    shipped = plan.compression
    if shipped is None:
        return None
    return CompressionRecord(
        reference=plan.recorder.path(shipped.reference), pretrained=shipped.pretrained,
        source=None if shipped.source is None else FileFacts(
            **_recorded_facts(shipped.source, plan.recorder)),
        key=shipped.state_key,
        state=None if shipped.state is None else StateFacts.of(shipped.state))
