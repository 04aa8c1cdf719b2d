"""The clips validation made, how they were made, and how they are kept in the release.

How: the generation settings (:class:`Generation`), the XP's own (its solver's
``generation_params`` read as data from ``xp.cfg``) or stock audiocraft's, with the seed.
Kept: ``samples/<name>.wav`` written as AudioCraft's solvers write their samples (``audio_write``:
``normalize_audio`` with the XP's ``generate.audio`` strategy, then 16-bit PCM), and its
spectrogram drawn from that same normalised signal.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import GenerationChoice
from ..errors import shown
from ..untrusted.xp_config import literal_value, raw_value
from ..writing.release_format import CLIP_NAMES, SAMPLES_DIR, fsync_dir, write_bytes
from .figures import spectrogram_png

# set_generation_params' argument -> the xp.cfg key its solver generates with: MusicGenSolver's
# generation_params (generate.lm); the CFG coefficient is the LM's own (built from
# classifier_free_guidance.inference_coef), which the solver never overrides but
# set_generation_params would (its default is 3.0)
LM_KEYS = {"use_sampling": "generate.lm.use_sampling", "top_k": "generate.lm.top_k",
           "top_p": "generate.lm.top_p", "temperature": "generate.lm.temp",
           "cfg_coef": "classifier_free_guidance.inference_coef"}
# MagnetSolver's generation_params, as MAGNeT.set_generation_params takes them (anneal_temp and
# span_scoring, which it does not take, are MAGNET_UNSET)
MAGNET_KEYS = {"use_sampling": "generate.lm.use_sampling", "top_k": "generate.lm.top_k",
               "top_p": "generate.lm.top_p", "temperature": "generate.lm.temp",
               "max_cfg_coef": "generate.lm.max_cfg_coef",
               "min_cfg_coef": "generate.lm.min_cfg_coef",
               "decoding_steps": "generate.lm.decoding_steps",
               "span_arrangement": "generate.lm.span_arrangement"}
# what MAGNeT's generate uses when set_generation_params cannot pass the solver's value
MAGNET_UNSET = {"generate.lm.anneal_temp": True, "generate.lm.span_scoring": "max"}
# audio_write's normalisation arguments, which the solvers' sample manager takes from
# generate.audio (format and sample_rate aside: always WAV at the model's rate here)
AUDIO_KEYS = {name: f"generate.audio.{name}" for name in (
    "normalize", "strategy", "peak_clip_headroom_db", "rms_headroom_db",
    "loudness_headroom_db", "loudness_compressor")}


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


VALID: dict[str, Callable[[Any], bool]] = {
    "use_sampling": lambda v: type(v) is bool,
    "top_k": lambda v: type(v) is int and v >= 0,
    "top_p": lambda v: _number(v) and 0 <= v <= 1,
    "temperature": lambda v: _number(v) and v > 0,
    "cfg_coef": _number, "max_cfg_coef": _number, "min_cfg_coef": _number,
    "decoding_steps": lambda v: isinstance(v, list) and 0 < len(v) <= 64 and all(
        type(s) is int and 1 <= s <= 10_000 for s in v),
    "span_arrangement": lambda v: v in ("nonoverlap", "stride1"),
    "normalize": lambda v: type(v) is bool, "loudness_compressor": lambda v: type(v) is bool,
    "strategy": lambda v: v in ("peak", "clip", "rms", "loudness"),
    "peak_clip_headroom_db": _number, "rms_headroom_db": _number,
    "loudness_headroom_db": _number,
}


@dataclass(frozen=True)
class Generation:
    """How validation made its clips, as the manifest and the card record it."""

    settings: str  # validate.generation: xp or stock
    seed: int  # torch.manual_seed before each clip (the EnCodec test signal's noise seed)
    params: dict[str, Any]  # set_generation_params' keyword arguments, as called
    audio: dict[str, Any]  # normalize_audio's arguments each WAV was written with
    # "<xp.cfg key>: why" for each XP setting replaced by audiocraft's default
    defaults: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generation_settings(cfg: DictConfig | None, choice: GenerationChoice, seed: int,
                        keys: Mapping[str, str], param_defaults: Mapping[str, Any],
                        audio_defaults: Mapping[str, Any],
                        fixed: Mapping[str, Any] | None = None) -> Generation:
    """The settings to generate with: for each argument of ``keys``, the XP's literal value at
    its ``xp.cfg`` key (``choice`` xp) or audiocraft's default (``param_defaults``, read from
    set_generation_params' signature; ``audio_defaults`` from audio_write's); ``fixed``
    arguments (the duration) as given."""
    params, notes = _read(cfg, keys, param_defaults, choice, absent_noted=True)
    audio, audio_notes = _read(cfg, AUDIO_KEYS, audio_defaults, choice, absent_noted=False)
    if cfg is not None and choice is GenerationChoice.xp and "decoding_steps" in keys:
        for key, used in MAGNET_UNSET.items():
            value = literal_value(cfg, key)
            if value is not None and value != used:
                notes.append(f"{key}: {shown(value, 40)} is not taken by "
                             f"set_generation_params; MAGNeT's generate uses {used!r}")
    return Generation(choice.value, seed, {**params, **(fixed or {})}, audio,
                      notes + audio_notes)


def _read(cfg: DictConfig | None, keys: Mapping[str, str], defaults: Mapping[str, Any],
          choice: GenerationChoice, absent_noted: bool) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    notes: list[str] = []
    for arg, key in keys.items():
        default = defaults[arg]
        values[arg] = default
        if choice is GenerationChoice.stock or cfg is None:
            continue
        value = literal_value(cfg, key)
        if value is None:
            raw = raw_value(cfg, key)
            if raw is not None:
                notes.append(f"{key}: not a literal ({shown(raw, 60)}); audiocraft's default "
                             f"{default!r}")
            elif absent_noted:  # an absent generate.audio key is audio_write's default anyway
                notes.append(f"{key}: not set; audiocraft's default {default!r}")
        elif not VALID[arg](value):
            notes.append(f"{key}: {shown(value, 60)} is not a valid {arg}; audiocraft's "
                         f"default {default!r}")
        else:
            values[arg] = float(value) if type(default) is float and type(value) is int \
                else value
    return values, notes


@dataclass(frozen=True)
class Clip:
    """A waveform validation produced (generated, or encoded and decoded)."""

    name: str  # one of release.CLIP_NAMES: the file names of the release
    wav: torch.Tensor  # [channels, samples]
    sample_rate: int
    description: str | None  # the text prompt, or what the clip is
    generation: Generation | None = None  # how it was made and is to be written


def write_samples(clips: Sequence[Clip], release_dir: Path) -> list[dict[str, Any]]:
    """Write each clip as AudioCraft writes its samples (normalised, 16-bit PCM WAV) with the
    spectrogram of that same signal under ``samples/``; return what the manifest records."""
    if not clips:
        return []
    folder = release_dir / SAMPLES_DIR
    folder.mkdir()
    records = []
    for clip in clips:
        if clip.name not in CLIP_NAMES:
            raise ValueError(f"unknown clip name {clip.name!r}")
        audio = clip.generation.audio if clip.generation is not None else {}
        wav, clipped = normalized(clip.wav.detach().float().cpu(), clip.sample_rate, audio)
        _write_wav(wav, clip.sample_rate, folder / f"{clip.name}.wav")
        title = clip.description if clip.description else clip.name
        spectrogram_png(wav, clip.sample_rate, title, folder / f"{clip.name}.png")
        records.append({"name": clip.name, "audio": f"{SAMPLES_DIR}/{clip.name}.wav",
                        "spectrogram": f"{SAMPLES_DIR}/{clip.name}.png",
                        "description": clip.description, "sample_rate": clip.sample_rate,
                        "channels": wav.shape[0],
                        "seconds": round(wav.shape[-1] / clip.sample_rate, 3),
                        "clipped_samples": clipped,
                        "generation": clip.generation.to_json() if clip.generation else None})
    fsync_dir(folder)
    return records


def normalized(wav: torch.Tensor, sample_rate: int,
               audio: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
    """``wav`` normalised as ``audio_write(..., **audio)`` normalises it (audiocraft's own
    ``normalize_audio``, which clamps to [-1, 1] last), and how many samples that clamp (or
    the ``clip`` strategy) limited: the WAV and its spectrogram are drawn from this signal."""
    from audiocraft.data.audio_utils import normalize_audio

    if not wav.abs().max() > 0:  # silence: nothing to scale (peak's 0/0 would give NaN)
        return wav, 0
    out = normalize_audio(wav.clone(), sample_rate=sample_rate, log_clipping=False, **audio)
    bound = 10 ** (-audio.get("peak_clip_headroom_db", 1) / 20) \
        if audio.get("strategy") == "clip" else 1.0
    return out, int((out.abs() >= bound * (1 - 1e-6)).sum())


def pcm16(wav: torch.Tensor) -> torch.Tensor:
    """float samples in [-1, 1] as 16-bit PCM, as ffmpeg's pcm_s16le (audio_write's WAV
    codec) converts them: rounded x * 32768, saturated."""
    return (wav * 32768).round().clamp(-32768, 32767).to(torch.int16)


def _write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> None:
    import soundfile

    buffer = io.BytesIO()
    # PCM_16 plays everywhere (browsers, the Hub's audio widget)
    soundfile.write(buffer, pcm16(wav).T.numpy(), sample_rate, format="WAV", subtype="PCM_16")
    write_bytes(buffer.getvalue(), path)
