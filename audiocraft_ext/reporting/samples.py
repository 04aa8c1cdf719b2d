"""The clips validation made, kept in the release: ``samples/<name>.wav`` and its spectrogram."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..writing.release_format import CLIP_NAMES, SAMPLES_DIR, fsync_dir, write_bytes
from .figures import spectrogram_png


@dataclass(frozen=True)
class Clip:
    """A waveform validation produced (generated, or encoded and decoded)."""

    name: str  # one of release.CLIP_NAMES: the file names of the release
    wav: torch.Tensor  # [channels, samples]
    sample_rate: int
    description: str | None  # the text prompt, or what the clip is


def write_samples(clips: Sequence[Clip], release_dir: Path) -> list[dict[str, Any]]:
    """Write each clip as 16-bit PCM WAV with its spectrogram PNG under ``samples/``; return
    what the manifest records of them."""
    if not clips:
        return []
    folder = release_dir / SAMPLES_DIR
    folder.mkdir()
    records = []
    for clip in clips:
        if clip.name not in CLIP_NAMES:
            raise ValueError(f"unknown clip name {clip.name!r}")
        wav = clip.wav.detach().float().cpu()
        _write_wav(wav, clip.sample_rate, folder / f"{clip.name}.wav")
        title = clip.description if clip.description else clip.name
        spectrogram_png(wav, clip.sample_rate, title, folder / f"{clip.name}.png")
        records.append({"name": clip.name, "audio": f"{SAMPLES_DIR}/{clip.name}.wav",
                        "spectrogram": f"{SAMPLES_DIR}/{clip.name}.png",
                        "description": clip.description, "sample_rate": clip.sample_rate,
                        "channels": wav.shape[0],
                        "seconds": round(wav.shape[-1] / clip.sample_rate, 3)})
    fsync_dir(folder)
    return records


def _write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> None:
    import soundfile

    buffer = io.BytesIO()
    # PCM_16 plays everywhere (browsers, the Hub's audio widget); clipped, as any player would
    soundfile.write(buffer, wav.clamp(-1, 1).T.numpy(), sample_rate, format="WAV",
                    subtype="PCM_16")
    write_bytes(buffer.getvalue(), path)
