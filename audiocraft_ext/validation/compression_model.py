"""Prove an EnCodec-only release: the file, CompressionModel.get_pretrained with an exact
comparison, and an encode/decode round trip of a test signal."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import ValidateConfig, ValidateLevel
from ..errors import ExportError
from ..reporting.manifest import Check, ValidationReport
from ..reporting.samples import Clip, generation_settings
from ..untrusted.states import StateDict
from ..writing.release_format import COMPRESSION_FILE
from ..writing.torch_zip import WrittenZip
from .background_import import wait_for_audiocraft
from .compare import check_release_file, compare_states
from .lean_loading import lean_loading
from .lm import audio_defaults
from .records import Checks, timed

logger = logging.getLogger(__name__)


def validate_compression_release(release_dir: Path, state: StateDict,
                                 settings: ValidateConfig,
                                 written: Mapping[str, WrittenZip],
                                 clips: list[Clip] | None = None,
                                 cfg: DictConfig | None = None) -> ValidationReport:
    """Check an EnCodec-only release: the file, CompressionModel.get_pretrained(file) with an
    exact comparison, and (``full``) an encode/decode round trip, whose input and output are
    appended to ``clips``, to be written as ``cfg`` (its XP's config) says."""
    report = ValidationReport(settings.level.value)
    if settings.level is ValidateLevel.none:
        return report
    checks = Checks(report)
    path = release_dir / COMPRESSION_FILE
    with checks.check("compression_file"):
        check_release_file(path, state, written[COMPRESSION_FILE])
    wait_for_audiocraft()
    from audiocraft.models import CompressionModel

    with checks.check("get_pretrained") as entry, lean_loading():
        logger.info("building the compression model with CompressionModel.get_pretrained")
        model = CompressionModel.get_pretrained(str(path), device=settings.device)
        with timed(entry):
            compare_states(state, model.state_dict(), "CompressionModel.get_pretrained",
                           cast=True)
        entry.model_class = type(model).__name__
    if settings.level is ValidateLevel.full:
        with checks.check("encode_decode") as entry:
            _round_trip(model, cfg, settings, clips if clips is not None else [], entry)
    return report


def probe_signal(seconds: float, sample_rate: int, channels: int, seed: int) -> torch.Tensor:
    """A signal worth listening to after a round trip: a rising tone over a soft chord with a
    little noise, [1, channels, samples]."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    sweep = 220.0 * 4 ** (t / max(seconds, 1e-3))  # two octaves up over the clip
    phase = 2 * math.pi * torch.cumsum(sweep, 0) / sample_rate
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (261.63, 329.63, 392.0))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
    wav = 0.3 * torch.sin(phase) + 0.1 * chord + 0.01 * noise
    return wav.float().expand(1, channels, -1).clone()


def _round_trip(model: Any, cfg: DictConfig | None, settings: ValidateConfig,
                clips: list[Clip], entry: Check) -> None:
    wav = probe_signal(settings.duration, model.sample_rate, model.channels, settings.seed)
    samples = wav.shape[-1]
    with torch.no_grad():
        codes, scale = model.encode(wav)
        frames = codes.shape[-1]
        if tuple(codes.shape[:2]) != (1, model.num_codebooks) or codes.is_floating_point():
            raise ExportError(f"encode returned codes of shape {tuple(codes.shape)} and dtype "
                              f"{codes.dtype}, expected (1, {model.num_codebooks}, frames) ints")
        if int(codes.min()) < 0 or int(codes.max()) >= model.cardinality:
            raise ExportError(f"encode returned codes outside [0, {model.cardinality})")
        decoded = model.decode(codes, scale)
    if tuple(decoded.shape[:2]) != (1, model.channels) or abs(decoded.shape[-1] - samples) > \
            samples // frames + 1:
        raise ExportError(f"decode returned shape {tuple(decoded.shape)} for {samples} samples")
    if not torch.isfinite(decoded).all():
        raise ExportError("decode produced non-finite samples")
    # written as the XP's solver writes its samples (generate.audio), or audio_write's default
    written = generation_settings(cfg, settings.generation, settings.seed, {}, {},
                                  audio_defaults())
    clips += [Clip("input", wav[0], model.sample_rate, "test signal: a rising tone over a chord",
                   written),
              Clip("reconstruction", decoded[0], model.sample_rate,
                   f"the test signal encoded to {model.num_codebooks} codebooks and decoded",
                   written)]
    entry.sample_rate, entry.frame_rate = model.sample_rate, float(model.frame_rate)
    entry.codes, entry.decoded = list(codes.shape), list(decoded.shape)
