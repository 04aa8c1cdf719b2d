"""Writing a planned release into its staging folder: audiocraft's files, then transformers'
(and their ONNX export)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..onnx_format.files import write_onnx_files
from ..reporting.manifest import StateFacts
from ..reporting.progress import byte_progress
from ..transformers_format.files import write_encodec_files, write_musicgen_files
from ..writing.release_format import save_package
from ..writing.torch_zip import WrittenZip
from .plan import ReleasePlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What was written: each audiocraft file as its writer saw it, and transformers' files."""

    files: Mapping[str, WrittenZip]
    transformers: Mapping[str, Any] | None  # output.transformers: what the manifest records


def write_release(plan: ReleasePlan, staging: Path) -> Written:
    """Write the files ``plan`` lists into ``staging``."""
    files = _write_packages(staging, plan.packages)
    return Written(files, _write_transformers(plan, staging) if plan.spec.output.transformers
                   else None)


def _write_packages(staging: Path, packages: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, WrittenZip]:
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


def _write_transformers(plan: ReleasePlan, staging: Path) -> dict[str, Any]:
    if not plan.family.is_lm:
        logger.info("writing transformers' format (EncodecModel)")
        return write_encodec_files(staging, plan.cfg, plan.weights)
    compression, compression_cfg = plan.compression, plan.compression_cfg
    # the plan refused transformers' format for a release without an EnCodec's weights
    assert compression is not None and compression.state is not None and compression_cfg
    logger.info("writing transformers' format (MusicgenForConditionalGeneration)")
    output = plan.spec.output
    facts = write_musicgen_files(staging, plan.cfg, plan.weights, compression_cfg,
                                 compression.state, output.text_encoder,
                                 transformers_js=output.onnx)
    facts["text_encoder"] = plan.recorder.path(facts["text_encoder"])
    if output.onnx:
        logger.info("exporting it to ONNX (Optimum's exporter)")
        facts["onnx"] = write_onnx_files(staging, output.onnx_quantize)
    return facts
