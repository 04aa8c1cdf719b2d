"""The pictures of a release: a clip's spectrogram and the training curves (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..writing.release_format import write_bytes

# PNG metadata left out so that the same data draws the same bytes
_NO_METADATA = {"Software": None}
N_FFT = 1024
FLOOR_DB = -80.0
# Curve values beyond this magnitude are not drawn (matplotlib cannot scale an axis holding
# 1e308); like infinities and NaN, they are left as gaps and counted in the panel's title.
MAX_DRAWN = 1e12


def _figure(width: float, height: float) -> Any:
    """A figure drawn by Agg alone: neither pyplot nor the caller's backend is touched (a
    notebook calling export_release keeps its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(fig: Any, path: Path) -> None:
    from io import BytesIO

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata=_NO_METADATA)
    write_bytes(buffer.getvalue(), path)


def spectrogram_png(wav: torch.Tensor, sample_rate: int, title: str, path: Path) -> None:
    """Draw the log-magnitude spectrogram (dB, channels mixed) of ``wav`` [channels, samples]."""
    mono = wav.float().mean(dim=0)
    n_fft = min(N_FFT, max(16, 2 ** int(math.log2(max(mono.numel(), 16)))))
    spec = torch.stft(mono, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-12))
    db = (db - db.max()).clamp_min(FLOOR_DB)
    fig = _figure(8, 3)
    ax = fig.subplots()
    seconds = mono.numel() / sample_rate
    image = ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, seconds, 0.0, sample_rate / 2000))
    ax.set(xlabel="time (s)", ylabel="frequency (kHz)")
    # a prompt is text, not mathtext: "$^$" in a description would not even draw
    ax.set_title(title, parse_math=False)
    fig.colorbar(image, ax=ax, label="dB")
    fig.tight_layout()
    _save(fig, path)


def training_curves_png(curves: dict[str, dict[str, list[float]]], best_epoch: int | None,
                        title: str, path: Path) -> None:
    """Draw each metric per epoch (train and valid), one panel per metric."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4 * len(curves), 3)
    axes = fig.subplots(1, len(curves), squeeze=False)
    epochs = max(len(values) for stages in curves.values() for values in stages.values())
    for ax, (metric, stages) in zip(axes[0], curves.items(), strict=True):
        undrawn = 0
        for stage, values in stages.items():
            drawn = [v if math.isfinite(v) and abs(v) <= MAX_DRAWN else math.nan for v in values]
            undrawn += sum(1 for v, d in zip(values, drawn, strict=True)
                           if math.isnan(d) and not math.isnan(v))
            ax.plot(range(1, len(values) + 1), drawn, marker="o", markersize=3, label=stage)
        if best_epoch is not None and 1 <= best_epoch <= epochs:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set(xlabel="epoch")
        off_scale = f" ({undrawn} value(s) infinite or off scale, not drawn)" if undrawn else ""
        ax.set_title(metric + off_scale, parse_math=False)
        ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    _save(fig, path)
