"""Prove an LM release (MusicGen, AudioGen, MAGNeT) with stock AudioCraft: the files, its
loaders or get_pretrained with an exact comparison, then generation."""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import ValidateConfig, ValidateLevel
from ..errors import ExportError, setting, shown
from ..families import LM_SOLVERS, Family
from ..reporting.manifest import Check, ValidationReport
from ..reporting.progress import step_progress
from ..reporting.samples import LM_KEYS, MAGNET_KEYS, Clip, Generation, generation_settings
from ..untrusted.states import StateDict
from ..writing.compression import CompressionRelease
from ..writing.release_format import COMPRESSION_FILE, LM_FILE, save_package
from ..writing.torch_zip import WrittenZip
from .background_import import wait_for_audiocraft
from .compare import check_release_file, compare_states
from .lean_loading import lean_loading
from .messages import load_pretrained, text_encoder_explained
from .records import Checks, timed

logger = logging.getLogger(__name__)


def validate_release(release_dir: Path, family: Family, lm_cfg: DictConfig, lm_state: StateDict,
                     compression: CompressionRelease | None, settings: ValidateConfig,
                     written: Mapping[str, WrittenZip],
                     stand_in: CompressionRelease | None = None,
                     clips: list[Clip] | None = None) -> ValidationReport:
    """Check a (staged) release folder per ``settings.level``; raise ExportError on failure.

    ``written`` is what the writer wrote (sizes, record CRCs). ``stand_in`` is a local
    compression model to validate with when the release points at a //pretrained/ one
    (``validate.compression_model``). The clips generated are appended to ``clips``.
    Returns the manifest's report.
    """
    report = ValidationReport(settings.level.value)
    if settings.level is ValidateLevel.none:
        return report
    files = {LM_FILE: lm_state}
    if compression is not None and compression.state is not None and not compression.pretrained:
        files[COMPRESSION_FILE] = compression.state
    with ExitStack() as stack:
        load_dir = release_dir
        if stand_in is not None and compression is not None and compression.pretrained:
            load_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            os.symlink(release_dir / LM_FILE, load_dir / LM_FILE)
            save_package(stand_in.package, load_dir / COMPRESSION_FILE)
            report.compression_stand_in = stand_in.reference
            compression = stand_in
        _run_checks(release_dir, load_dir, family, lm_cfg, lm_state, compression, settings,
                    {name: (state, written[name]) for name, state in files.items()}, report,
                    clips if clips is not None else [])
    return report


def _run_checks(release_dir: Path, load_dir: Path, family: Family, lm_cfg: DictConfig,
                lm_state: StateDict,
                compression: CompressionRelease | None, settings: ValidateConfig,
                files: Mapping[str, tuple[StateDict, WrittenZip]],
                report: ValidationReport, clips: list[Clip]) -> None:
    """``load``: the file, then audiocraft's load_compression_model and load_lm_model (each
    compared exactly with its source state). ``full``: the file, then X.get_pretrained, which
    runs those same two loaders: its LM and compression model are compared instead, so each
    model is built once; then generation."""
    checks = Checks(report)
    if family.model_class is None:
        raise ExportError(f"cannot validate an LM of solver {shown(family.solver)} (known: "
                          f"{', '.join(LM_SOLVERS)}); use {setting('validate', 'none')}")
    for name, (state, wrote) in files.items():
        with checks.check("lm_file" if name == LM_FILE else "compression_file"):
            check_release_file(release_dir / name, state, wrote)
    # the plan refused a model get_pretrained cannot load (segments too short) at this level
    full = settings.level is ValidateLevel.full and compression is not None
    wait_for_audiocraft()
    from audiocraft.models import loaders

    with lean_loading(), text_encoder_explained(lm_cfg):
        if not full:
            _check_loaders(loaders, load_dir, lm_state, compression, family, settings, checks,
                           report)
            return
        assert compression is not None
        with checks.check("get_pretrained") as entry:
            import audiocraft.models

            cls = getattr(audiocraft.models, family.model_class)
            logger.info("building %s from the release with %s.get_pretrained", cls.__name__,
                        cls.__name__)
            model = load_pretrained(lambda: cls.get_pretrained(str(load_dir),
                                                                device=settings.device),
                                     compression.pretrained)
            entry.model_class = cls.__name__
            with timed(entry):
                if compression.state is not None:
                    compare_states(compression.state,
                                   released_compression(model.compression_model).state_dict(),
                                   f"{cls.__name__}.get_pretrained's compression model",
                                   cast=True)
                compare_states(lm_state, model.lm.state_dict(),
                               f"{cls.__name__}.get_pretrained's LM", cast=True)
            entry.proves = ["load_compression_model", "load_lm_model_magnet"
                            if family.magnet else "load_lm_model"]
    with checks.check("generate") as entry:
        _generate(model, lm_cfg, settings, clips, entry)


def released_compression(compression_model: Any) -> Any:
    """The compression model the release holds, inside the wrapper a model adds at load
    (``InterleaveStereoCompressionModel`` for a stereo MusicGen over its mono EnCodec)."""
    if type(compression_model).__name__ == "InterleaveStereoCompressionModel":
        return compression_model.model
    return compression_model


def _check_loaders(loaders: Any, load_dir: Path, lm_state: StateDict,
                   compression: CompressionRelease | None, family: Family,
                   settings: ValidateConfig, checks: Checks, report: ValidationReport) -> None:
    """audiocraft's load_compression_model and load_lm_model(_magnet), each compared."""
    device = settings.device
    frame_rate = None
    if compression is None:
        report.skipped.append("compression and get_pretrained: compression=none")
    else:
        with checks.check("load_compression_model") as entry:
            logger.info("building the compression model with load_compression_model")
            model = load_pretrained(
                lambda: loaders.load_compression_model(load_dir, device=device),
                compression.pretrained)
            if compression.state is not None:
                with timed(entry):
                    compare_states(compression.state, model.state_dict(),
                                   "load_compression_model", cast=True)
            frame_rate = int(model.frame_rate)
            entry.sample_rate, entry.frame_rate = model.sample_rate, float(model.frame_rate)
            del model
    if family.magnet and frame_rate is None:
        report.skipped.append("load_lm_model_magnet: it needs the compression model's frame "
                              "rate")
        return
    loader = "load_lm_model_magnet" if family.magnet else "load_lm_model"
    with checks.check(loader) as entry:
        logger.info("building the LM with %s", loader)
        if family.magnet and frame_rate is not None:
            lm = loaders.load_lm_model_magnet(
                load_dir, compression_model_frame_rate=frame_rate, device=device)
        else:
            lm = loaders.load_lm_model(load_dir, device=device)
        with timed(entry):
            compare_states(lm_state, lm.state_dict(), "reloaded LM", cast=True)
        del lm


def model_generation(model: Any, lm_cfg: DictConfig, settings: ValidateConfig) -> Generation:
    """The settings ``model`` generates with (``validate.generation``): its XP's own from
    ``lm_cfg``, else set_generation_params' defaults; ``validate.duration`` seconds but for
    MAGNeT, which generates its training segment_duration always."""
    magnet = type(model).__name__ == "MAGNeT"
    keys = MAGNET_KEYS if magnet else LM_KEYS
    return generation_settings(lm_cfg, settings.generation, settings.seed, keys,
                               signature_defaults(model.set_generation_params),
                               audio_defaults(),
                               None if magnet else {"duration": settings.duration})


def signature_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default value of each keyword argument of ``function``."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def audio_defaults() -> dict[str, Any]:
    """audio_write's own defaults for its normalisation arguments."""
    from audiocraft.data.audio import audio_write

    return signature_defaults(audio_write)


# The melody a MusicGen-melody is validated with: C4, E4, G4, C5 as sine tones, in turn.
MELODY_NOTES_HZ = (261.63, 329.63, 392.0, 523.25)
MELODY_DESCRIPTION = "the melody prompt: C4, E4, G4, C5 as sine tones, in turn"


def melody_prompt(sample_rate: int, seconds: float) -> torch.Tensor:
    """[1, samples] of :data:`MELODY_NOTES_HZ`, each a quarter of ``seconds``."""
    total = int(seconds * sample_rate)
    t = torch.arange(total, dtype=torch.float32) / sample_rate
    note = torch.clamp((torch.arange(total) * len(MELODY_NOTES_HZ)) // max(total, 1),
                       max=len(MELODY_NOTES_HZ) - 1)
    freqs = torch.tensor(MELODY_NOTES_HZ)[note]
    return (0.5 * torch.sin(2 * torch.pi * freqs * t))[None]


def _generate(model: Any, lm_cfg: DictConfig, settings: ValidateConfig, clips: list[Clip],
              entry: Check) -> None:
    generation = model_generation(model, lm_cfg, settings)
    model.set_generation_params(**generation.params)
    for note in generation.defaults:  # recorded in the manifest and the card
        logger.info("generation: %s", note)
    expected = (1, model.audio_channels,
                int(model.duration * model.frame_rate) * model.sample_rate // model.frame_rate)
    prompts: dict[str, Callable[[], torch.Tensor]] = {
        "unconditional": lambda: model.generate_unconditional(1, progress=True)}
    if model.lm.condition_provider.text_conditions:
        prompts["text"] = lambda: model.generate([settings.description], progress=True)
    if "self_wav" in model.lm.condition_provider.conditioners:  # MusicGen-melody
        melody = melody_prompt(model.sample_rate, model.duration)
        clips.append(Clip("melody_prompt", melody, model.sample_rate, MELODY_DESCRIPTION))
        prompts["melody"] = lambda: model.generate_with_chroma(
            [settings.description], melody[None], model.sample_rate, progress=True)
    shapes = {}
    for name, run in prompts.items():
        logger.info("generating %g s of audio (%s)", model.duration, name)
        update, close = step_progress(f"generating ({name})")
        # replaces audiocraft's default callback, which prints to stdout (the release path's)
        model.set_custom_progress_callback(update)
        torch.manual_seed(settings.seed)
        try:
            wav = run()
        finally:
            close()
            model.set_custom_progress_callback(None)
        if tuple(wav.shape) != expected:
            raise ExportError(f"{name} generation returned shape {tuple(wav.shape)}, "
                              f"expected {expected}")
        if not torch.isfinite(wav).all():
            raise ExportError(f"{name} generation produced non-finite samples")
        shapes[name] = list(wav.shape)
        clips.append(Clip(name, wav[0], model.sample_rate,
                          settings.description if name in ("text", "melody") else None,
                          generation))
    entry.sample_rate, entry.frame_rate = model.sample_rate, float(model.frame_rate)
    entry.duration, entry.shapes = model.duration, shapes
