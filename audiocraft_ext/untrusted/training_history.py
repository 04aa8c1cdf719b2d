"""What a checkpoint's ``history`` says about its training: epochs, last and best metrics, curves.

audiocraft's solvers append one ``{stage: {metric: value}}`` dict per epoch (stages ``train``,
``valid``, ``evaluate``, ``generate``). The history comes from an untrusted pickle: anything
that is not a number under a string key of a dict is ignored, never trusted; names are made
one printable line of bounded length, and a number a float cannot hold (``10**400``) becomes
an infinity of its sign, shown as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import one_line

# The metric each solver family picks its best state by (its `best_metric_name`): the lowest
# valid value wins. The compression solver has none: its best state is its last.
BEST_METRIC = {"musicgen": "ce", "audiogen": "ce", "magnet": "ce", "audio_magnet": "ce"}
BEST_STAGE = "valid"
# Metrics drawn as training curves, when logged: the LMs' cross-entropy and perplexity, the
# compression models' reconstruction losses.
CURVE_METRICS = ("ce", "ppl", "loss", "l1", "mel", "msspec", "sisnr")
CURVE_STAGES = ("train", "valid")
MAX_METRICS = 64  # of one stage kept in a summary: a history may hold thousands of keys
MAX_NAME = 64  # characters of a metric or stage name kept: a name may be megabytes long


@dataclass(frozen=True)
class TrainingSummary:
    """The facts of a history that a model card, a listing and a plot need."""

    epochs: int
    last: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> metric -> value
    best_metric: str | None = None
    best_epoch: int | None = None  # 1-based, as audiocraft's logs count epochs
    best_value: float | None = None
    omitted: int = 0  # metrics of the last epoch left out beyond MAX_METRICS per stage

    def metric(self, name: str, stage: str = BEST_STAGE) -> float | None:
        """The last epoch's value of ``stage``'s metric ``name``, or None."""
        return self.last.get(stage, {}).get(name)


def as_float(value: int | float) -> float:
    """``value`` as a float; an integer too large for one becomes an infinity of its sign."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _numbers(stage: Any, limit: int | None = MAX_METRICS) -> dict[str, float]:
    if not isinstance(stage, dict):
        return {}
    values = {one_line(k, MAX_NAME): as_float(v) for k, v in stage.items()
              if isinstance(k, str) and type(v) in (int, float) and k != "duration"}
    return dict(list(values.items())[:limit])


def epochs_of(history: Any) -> list[dict[str, dict[str, float]]]:
    """The history as a list of ``{stage: {metric: number}}``, dropping anything else."""
    if not isinstance(history, list):
        return []
    return [{one_line(s, MAX_NAME): _numbers(m) for s, m in epoch.items() if isinstance(s, str)}
            if isinstance(epoch, dict) else {} for epoch in history]


def summarize_history(history: Any, solver: str | None) -> TrainingSummary:
    """Epochs trained, the last epoch's train/valid metrics and the best epoch by the
    solver family's own rule."""
    epochs = epochs_of(history)
    if not epochs:
        return TrainingSummary(epochs=0)
    last = {stage: epochs[-1].get(stage, {}) for stage in CURVE_STAGES if epochs[-1].get(stage)}
    metric = BEST_METRIC.get(solver) if isinstance(solver, str) else None
    best_epoch = best_value = None
    if metric is not None:
        scored = [(value, i + 1) for i, epoch in enumerate(epochs)
                  if (value := epoch.get(BEST_STAGE, {}).get(metric)) is not None
                  and not math.isnan(value)]
        if scored:
            best_value, best_epoch = min(scored)
    return TrainingSummary(epochs=len(epochs), last=last, best_metric=metric,
                           best_epoch=best_epoch, best_value=best_value,
                           omitted=_omitted(history[-1]))


def _omitted(epoch: Any) -> int:
    """How many metrics of the last epoch's curve stages the summary leaves out."""
    if not isinstance(epoch, dict):
        return 0
    return sum(max(0, len(_numbers(m, None)) - MAX_METRICS) for s, m in epoch.items()
               if s in CURVE_STAGES)


def curves(history: Any) -> dict[str, dict[str, list[float]]]:
    """``metric -> stage -> value per epoch`` (NaN where an epoch did not log it) for the
    :data:`CURVE_METRICS` that the history logs."""
    epochs = epochs_of(history)
    found: dict[str, dict[str, list[float]]] = {}
    for metric in CURVE_METRICS:
        for stage in CURVE_STAGES:
            values = [e.get(stage, {}).get(metric, math.nan) for e in epochs]
            if any(not math.isnan(v) for v in values):
                found.setdefault(metric, {})[stage] = values
    return found
