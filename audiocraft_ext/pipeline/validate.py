"""Validating a written release as its plan says: stock audiocraft's loaders, exact
comparisons, generation, and transformers' equivalence proof."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ValidateLevel
from ..onnx_format.files import prove_onnx
from ..reporting.manifest import ValidationReport
from ..reporting.samples import Clip
from ..transformers_format.files import prove_encodec, prove_release
from ..validation.compression_model import validate_compression_release
from ..validation.lm import validate_release
from .plan import ReleasePlan
from .write import Written

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validated:
    """What validation proved, and what it produced on the way."""

    report: ValidationReport
    clips: list[Clip] = field(default_factory=list)  # the audio it generated or round-tripped
    transformers: Mapping[str, Any] | None = None  # transformers' facts with the proof


def validate_plan(plan: ReleasePlan, staging: Path, written: Written) -> Validated:
    """Prove the release staged in ``staging``; raise ExportError on failure. What the
    libraries print meanwhile (torch.hub's "Downloading: ..." of demucs' weights, ...) goes
    to stderr: stdout is the release path's alone."""
    with contextlib.redirect_stdout(sys.stderr):
        return _validated(plan, staging, written)


def _validated(plan: ReleasePlan, staging: Path, written: Written) -> Validated:
    settings = plan.spec.validate
    clips: list[Clip] = []
    if plan.family.is_lm:
        report = validate_release(staging, plan.family, plan.cfg, plan.weights,
                                  plan.compression, settings, written.files, plan.stand_in,
                                  clips)
    else:
        report = validate_compression_release(staging, plan.weights, settings, written.files,
                                              clips, plan.cfg)
    if report.compression_stand_in is not None:
        report.compression_stand_in = plan.recorder.path(report.compression_stand_in)
    hf = written.transformers
    if hf is not None and settings.level is not ValidateLevel.none:
        logger.info("proving transformers' model against AudioCraft's")
        proof = (prove_release(staging, plan.cfg, settings.transformers_frames)
                 if plan.family.is_lm
                 else prove_encodec(staging, plan.cfg))
        hf = {**hf, "proof": proof}
        if "onnx" in hf:
            logger.info("proving the ONNX graphs with ONNX Runtime")
            hf["onnx"] = {**hf["onnx"], "proof": prove_onnx(
                staging, proof["greedy_frames"], hf["onnx"]["quantized"])}
    return Validated(report, clips, hf)
