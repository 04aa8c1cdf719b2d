"""Exporting a training checkpoint: plan, write, validate, describe, in a staged folder that
is published only once all four succeeded."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from ..config import (
    AutoCompression,
    CompressionConfig,
    ExportConfig,
    InputConfig,
    OutputConfig,
    StateChoice,
    StateConfig,
    ValidateConfig,
    ValidateLevel,
    WeightsInput,
)
from ..errors import ExportError, shown
from ..reporting.manifest import Manifest
from ..reporting.measure import phase
from ..untrusted.sources import (
    CheckpointSource,
    WeightsSource,
    resolve_checkpoint,
    resolve_weights,
)
from ..untrusted.xp_config import no_resolvers
from ..validation.background_import import import_audiocraft_meanwhile
from ..writing.publish import staged_release
from ..writing.release_format import RELEASE_FILES
from .describe import describe_release
from .plan import plan_release, select
from .validate import validate_plan
from .weights import select_weights
from .write import write_release

logger = logging.getLogger(__name__)
E = TypeVar("E", bound=Enum)
if TYPE_CHECKING:
    from _typeshed import DataclassInstance
D = TypeVar("D", bound="DataclassInstance")


@dataclass
class ExportResult:
    release_dir: Path
    manifest: Manifest = field(repr=False)


def export(checkpoint: str | Path | CheckpointSource, spec: ExportConfig, *,
           config: Mapping[str, Any] | None = None,
           extra_files: Mapping[str, str] | None = None) -> ExportResult:
    """Export ``checkpoint`` (a ``checkpoint*.th`` file or an XP folder) to the release folder
    ``spec.output.dir`` as ``spec`` says (``spec.input`` is read for ``trust`` alone).

    Only the selected state's tensors are read, one storage at a time, so memory stays near
    the size of the largest tensor whatever else the checkpoint holds. ``config`` (the
    composed configuration) is recorded in the manifest; ``extra_files`` (name -> text) are
    published with the release.

    Raises:
        ExportError: with a one-line explanation; nothing is left at the destination.
    """
    spec = _typed_spec(spec)
    if spec.output.dir is None:
        raise ValueError("spec.output.dir: the release folder is required")
    source = (checkpoint if isinstance(checkpoint, CheckpointSource)
              else resolve_checkpoint(checkpoint))
    out_dir = Path(os.path.abspath(os.path.expanduser(spec.output.dir)))  # ".." resolved
    unknown = sorted(set(extra_files or {}) - RELEASE_FILES)
    if unknown:
        raise ValueError(f"extra_files: {unknown[0]!r} is not a release file")
    timings: dict[str, dict[str, Any]] = {"export": {}, "validation": {}}
    # never replaced: the XP folder and Dora dir of a checkpoint; the weights and their base
    protected = ([source.path, *_base_folder(source)] if isinstance(source, WeightsSource)
                 else [source.path.parent, *([source.dora_dir] if source.dora_dir else [])])
    holding = ("the weights being exported or their base" if isinstance(source, WeightsSource)
               else "the checkpoint being exported")
    with staged_release(out_dir, spec.output.overwrite, protected, holding) as staging:
        with phase(timings["export"]):
            selection = select_weights(source, spec) if isinstance(source, WeightsSource) \
                else select(source, spec.state, spec.input.trust)
            if spec.validate.level is not ValidateLevel.none:
                import_audiocraft_meanwhile()
            plan = plan_release(source, spec, out_dir, selection)
            written = write_release(plan, staging)
        with phase(timings["validation"]), no_resolvers():
            validated = validate_plan(plan, staging, written)
        manifest = describe_release(plan, staging, written, validated, timings, config,
                                    extra_files or {})
    _log_phases(timings, spec.validate.level)
    logger.info("release written to %s", out_dir)
    return ExportResult(out_dir, manifest)


def _base_folder(source: CheckpointSource) -> list[Path]:
    """input=weights: the base's folder, never replaced by the release."""
    if not isinstance(source, WeightsSource) or not source.base:
        return []
    base = Path(source.base).expanduser()
    return [(base if base.is_dir() else base.parent).resolve()] if base.exists() else []


def _log_phases(timings: Mapping[str, Mapping[str, Any]], level: ValidateLevel) -> None:
    export_phase, validation_phase = timings["export"], timings["validation"]
    logger.info("export %.2fs (peak RSS %.0f MiB), validate=%s %.2fs (peak RSS %.0f MiB); "
                "process peak RSS %.0f MiB", export_phase["seconds"],
                export_phase["phase_peak_rss_bytes"] / 2**20, level.value,
                validation_phase["seconds"], validation_phase["phase_peak_rss_bytes"] / 2**20,
                validation_phase["peak_rss_bytes"] / 2**20)


def export_release(
    checkpoint: str | Path | CheckpointSource,
    out_dir: str | Path,
    *,
    state: StateConfig | StateChoice | str = StateChoice.auto,
    compression: CompressionConfig | None = None,
    validate: ValidateConfig | ValidateLevel | str | None = None,
    trust: bool = False,
    base: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
    **output: Any,
) -> ExportResult:
    """Export a solver checkpoint to an audiocraft release folder and prove it loads: the
    keyword form of :func:`export`.

    An LM (MusicGen, AudioGen, MAGNeT) gives ``state_dict.bin`` plus its compression model;
    an EnCodec XP gives ``compression_state_dict.bin`` alone.

    Args:
        checkpoint: a ``checkpoint*.th`` file or an XP folder; with ``base``, weights trained
            elsewhere (``input=weights``: a state dict file, a transformers MusicGen folder or
            a PEFT adapter folder).
        out_dir: the release folder to create; it appears only once complete and validated.
        state: which weights to release (a :class:`StateChoice`, or a :class:`StateConfig`).
        compression: the compression model file shipped beside an LM (default
            :class:`AutoCompression`: the one the LM was trained with).
        validate: what to check before publishing (a :class:`ValidateConfig`, or its level;
            default ``full``).
        trust: unpickle checkpoints without the allow-list (runs code they carry).
        base: for weights trained elsewhere, what gives their xp.cfg and compression model:
            an AudioCraft release folder, a training checkpoint or XP folder, or a Hub name
            in the Hugging Face cache.
        config: the composed configuration, recorded in the manifest.
        extra_files: text files to publish with the release (name -> content).
        **output: any field of :class:`OutputConfig` but ``dir`` (``overwrite=True``,
            ``dtype="float16"``, ``transformers=True``...), as documented there.
    Raises:
        ExportError: with a one-line explanation; nothing is left at ``out_dir``.
    """
    known = {f.name for f in fields(OutputConfig)} - {"dir"}
    for name in output:
        if name not in known:
            raise TypeError(f"export_release() got an unexpected keyword argument {name!r} "
                            f"(options of OutputConfig: {', '.join(sorted(known))})")
    spec = ExportConfig(
        input=InputConfig(trust=trust),
        state=state if isinstance(state, StateConfig)
        else StateConfig(select=_enum(StateChoice, state, "state")),
        compression=compression if compression is not None else AutoCompression(),
        output=OutputConfig(dir=str(out_dir), **output),
        validate=validate if isinstance(validate, ValidateConfig)
        else ValidateConfig(level=_enum(ValidateLevel, validate or ValidateLevel.full,
                                        "validate")))
    if base is not None:
        if isinstance(checkpoint, CheckpointSource):
            raise TypeError("base= goes with a weights path, not a resolved source")
        checkpoint = resolve_weights(WeightsInput(path=str(checkpoint), base=str(base)))
    return export(checkpoint, spec, config=config, extra_files=extra_files)


def _typed_spec(spec: ExportConfig) -> ExportConfig:
    """The library's boundary: enum values given as strings, in ``spec`` and its groups,
    become the schema's enums here, and only here."""
    groups = {f.name: _typed(getattr(spec, f.name)) for f in fields(spec)
              if is_dataclass(getattr(spec, f.name))}
    return _typed(replace(spec, **groups))


def _typed(options: D) -> D:
    """``options`` (a schema dataclass) with each enum field given as a string converted; a
    yes/no field must be a bool (``samples="no"`` would otherwise read as true)."""
    hints = get_type_hints(type(options))
    for f in fields(options):
        value = getattr(options, f.name)
        if hints[f.name] is bool and not isinstance(value, bool):
            raise ExportError(f"{f.name}={shown(value)} is not an option (known: True, False)")
    converted = {f.name: _enum(hints[f.name], getattr(options, f.name), f.name)
                 for f in fields(options)
                 if isinstance(hints[f.name], type) and issubclass(hints[f.name], Enum)}
    return replace(options, **converted)


def _enum(kind: type[E], value: E | str, name: str) -> E:
    """``value`` as the enum ``kind`` of the option ``name``."""
    try:
        return kind(value)
    except ValueError as exc:
        raise ExportError(f"{name}={shown(value)} is not an option (known: "
                          f"{', '.join(m.value for m in kind)})") from exc
