"""export_release: training checkpoint in, validated release folder out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig

from .compression import resolve_compression
from .config import (AutoCompression, CheckpointCompression, CompressionConfig, StateChoice,
                     ValidateConfig)
from .errors import ExportError
from .manifest import file_facts, state_facts, versions, written_file_facts
from .release import (COMPRESSION_FILE, LM_FILE, MANIFEST_FILE, lm_package, save_package,
                      staged_release, write_json)
from .safe_load import load_checkpoint
from .sources import CheckpointSource, resolve_checkpoint
from .states import select_state
from .validation import validate_release

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    release_dir: Path
    manifest: dict[str, Any] = field(repr=False)


def export_release(
    checkpoint: str | Path | CheckpointSource,
    out_dir: str | Path,
    *,
    state: StateChoice | str = StateChoice.auto,
    compression: CompressionConfig = AutoCompression(),
    validate: ValidateConfig = ValidateConfig(),
    overwrite: bool = False,
    trust: bool = False,
    config: Optional[Mapping[str, Any]] = None,
) -> ExportResult:
    """Export a solver checkpoint to an audiocraft release folder and prove it loads.

    Args:
        checkpoint: a ``checkpoint*.th`` file or an XP folder.
        out_dir: the release folder to create; it appears only once complete and validated.
        state: which weights to release (see :class:`StateChoice`).
        compression: which tokenizer file to ship beside the LM.
        validate: what to check before publishing.
        overwrite: replace an existing release (only after the new one validated).
        trust: unpickle checkpoints without the allow-list (runs code they carry).
        config: the composed configuration, recorded in the manifest.
    Raises:
        ExportError: with a one-line explanation; nothing is left at ``out_dir``.
    """
    source = checkpoint if isinstance(checkpoint, CheckpointSource) else resolve_checkpoint(checkpoint)
    state = StateChoice(state)
    out_dir = Path(out_dir).expanduser().absolute()
    started = time.perf_counter()
    with staged_release(out_dir, overwrite) as staging:
        pkg = load_checkpoint(source.path, trust=trust)
        if not isinstance(pkg, dict):
            raise ExportError(f"{source.path} holds a {type(pkg).__name__}, not a solver checkpoint")
        lm_cfg = pkg.get("xp.cfg")
        if not isinstance(lm_cfg, DictConfig):
            raise ExportError(f"{source.path} has no xp.cfg config "
                              f"({'missing' if lm_cfg is None else type(lm_cfg).__name__}): "
                              "not an AudioCraft solver checkpoint")
        state_key, lm_state = select_state(pkg, state, source=str(source.path))
        solver, xp_sig = lm_cfg.get("solver"), pkg.get("xp.sig")
        del pkg  # drop references to the optimizer, EMA and other states
        logger.info("exporting %s of %s (solver %s): %d tensors", state_key, source.path,
                    solver, len(lm_state))

        save_package(lm_package(lm_state, lm_cfg), staging / LM_FILE)
        tokenizer = resolve_compression(compression, lm_cfg, source, trust=trust)
        if tokenizer is not None:
            save_package(tokenizer.package, staging / COMPRESSION_FILE)
        export_seconds = time.perf_counter() - started

        manifest: dict[str, Any] = {
            "release": str(out_dir),
            "source": {**file_facts(source.path), "name": source.name, "solver": solver,
                       "xp_sig": xp_sig},
            "state": {"selected": state.value, "key": state_key, **state_facts(lm_state)},
            "compression": None if tokenizer is None else {
                "reference": tokenizer.reference,
                "pretrained": tokenizer.pretrained,
                "source": None if tokenizer.source is None else file_facts(tokenizer.source),
                "key": tokenizer.state_key,
                **(state_facts(tokenizer.state) if tokenizer.state is not None else {}),
            },
            "files": {name: written_file_facts(staging / name)
                      for name in (LM_FILE, COMPRESSION_FILE) if (staging / name).exists()},
            "versions": versions(),
            "config": dict(config) if config is not None else None,
        }
        stand_in = None
        if validate.tokenizer and tokenizer is not None and tokenizer.pretrained:
            stand_in = resolve_compression(CheckpointCompression(path=validate.tokenizer),
                                           lm_cfg, source, trust=trust)
        validation_started = time.perf_counter()
        manifest["validation"] = validate_release(staging, lm_cfg, lm_state, tokenizer, validate,
                                                  stand_in)
        manifest["timings"] = {"export_seconds": round(export_seconds, 3),
                               "validation_seconds": round(time.perf_counter() - validation_started, 3)}
        write_json(manifest, staging / MANIFEST_FILE)
    logger.info("release written to %s (validate=%s)", out_dir, manifest["validation"]["level"])
    return ExportResult(out_dir, manifest)
