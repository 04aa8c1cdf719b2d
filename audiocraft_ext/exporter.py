"""export_release: training checkpoint in, validated release folder out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig

from .compression import CompressionRelease, resolve_compression
from .config import (AutoCompression, CheckpointCompression, CompressionConfig, OutputDtype,
                     StateChoice, ValidateConfig)
from .errors import ExportError
from .manifest import file_facts, state_facts, versions
from .measure import phase
from .progress import byte_progress
from .release import (COMPRESSION_FILE, LM_FILE, MANIFEST_FILE, lm_package, save_package,
                      staged_release, write_json, write_text)
from .safe_load import load_checkpoint
from .sources import CheckpointSource, resolve_checkpoint
from .states import StateDict, select_state
from .stored_tensor import cast_state
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
    dtype: OutputDtype | str = OutputDtype.keep,
    overwrite: bool = False,
    trust: bool = False,
    config: Optional[Mapping[str, Any]] = None,
    extra_files: Optional[Mapping[str, str]] = None,
) -> ExportResult:
    """Export a solver checkpoint to an audiocraft release folder and prove it loads.

    Only the selected state's tensors are read, one storage at a time, so memory stays near
    the size of the largest tensor whatever else the checkpoint holds.

    Args:
        checkpoint: a ``checkpoint*.th`` file or an XP folder.
        out_dir: the release folder to create; it appears only once complete and validated.
        state: which weights to release (see :class:`StateChoice`).
        compression: which tokenizer file to ship beside the LM.
        validate: what to check before publishing.
        dtype: cast the LM's floating-point tensors (``keep``: as stored).
        overwrite: replace an existing release (only after the new one validated).
        trust: unpickle checkpoints without the allow-list (runs code they carry).
        config: the composed configuration, recorded in the manifest.
        extra_files: text files to publish with the release (name -> content).
    Raises:
        ExportError: with a one-line explanation; nothing is left at ``out_dir``.
    """
    source = checkpoint if isinstance(checkpoint, CheckpointSource) else resolve_checkpoint(checkpoint)
    state, dtype = StateChoice(state), OutputDtype(dtype)
    out_dir = Path(out_dir).expanduser().absolute()
    export_phase: dict[str, Any] = {}
    validation_phase: dict[str, Any] = {}
    with staged_release(out_dir, overwrite) as staging:
        with phase(export_phase):
            lm_cfg, state_key, lm_state, xp_sig = _read_lm(source, state, trust)
            if dtype is not OutputDtype.keep:
                lm_state = cast_state(lm_state, getattr(torch, dtype.value))
            tokenizer = resolve_compression(compression, lm_cfg, source, trust=trust)
            files = _write(staging, lm_cfg, lm_state, tokenizer)
        manifest: dict[str, Any] = {
            "release": str(out_dir),
            "source": {**file_facts(source.path), "name": source.name,
                       "solver": lm_cfg.get("solver"), "xp_sig": xp_sig},
            "state": {"selected": state.value, "key": state_key, "dtype": dtype.value,
                      **state_facts(lm_state)},
            "compression": _tokenizer_facts(tokenizer),
            "files": files,
            "versions": versions(),
            "config": dict(config) if config is not None else None,
        }
        stand_in = None
        if validate.tokenizer and tokenizer is not None and tokenizer.pretrained:
            stand_in = resolve_compression(CheckpointCompression(path=validate.tokenizer),
                                           lm_cfg, source, trust=trust)
        with phase(validation_phase):
            manifest["validation"] = validate_release(staging, lm_cfg, lm_state, tokenizer,
                                                      validate, stand_in)
        manifest["timings"] = {"export": export_phase, "validation": validation_phase}
        for name, text in (extra_files or {}).items():
            write_text(text, staging / name)
        write_json(manifest, staging / MANIFEST_FILE)
    logger.info("export %.2fs (peak RSS %.0f MiB), validate=%s %.2fs (peak RSS %.0f MiB)",
                export_phase["seconds"], export_phase["peak_rss_bytes"] / 2**20,
                manifest["validation"]["level"], validation_phase["seconds"],
                validation_phase["peak_rss_bytes"] / 2**20)
    logger.info("release written to %s", out_dir)
    return ExportResult(out_dir, manifest)


def _read_lm(source: CheckpointSource, state: StateChoice, trust: bool,
             ) -> tuple[DictConfig, str, StateDict, Optional[str]]:
    """The LM's config, the selected state (still on disk) and the XP signature."""
    pkg = load_checkpoint(source.path, trust=trust)
    if not isinstance(pkg, dict):
        raise ExportError(f"{source.path} holds a {type(pkg).__name__}, not a solver checkpoint")
    lm_cfg = pkg.get("xp.cfg")
    if not isinstance(lm_cfg, DictConfig):
        raise ExportError(f"{source.path} has no xp.cfg config "
                          f"({'missing' if lm_cfg is None else type(lm_cfg).__name__}): "
                          "not an AudioCraft solver checkpoint")
    state_key, lm_state = select_state(pkg, state, source=str(source.path))
    logger.info("exporting %s of %s (solver %s): %d tensors", state_key, source.path,
                lm_cfg.get("solver"), len(lm_state))
    return lm_cfg, state_key, lm_state, pkg.get("xp.sig")


def _write(staging: Path, lm_cfg: DictConfig, lm_state: StateDict,
           tokenizer: Optional[CompressionRelease]) -> dict[str, dict[str, Any]]:
    """Write the release files into ``staging``; return their bytes and sha256."""
    packages = {LM_FILE: lm_package(lm_state, lm_cfg)}
    if tokenizer is not None:
        packages[COMPRESSION_FILE] = tokenizer.package
    total = sum(state_facts(p["best_state"])["bytes"] for p in packages.values()
                if "best_state" in p)
    advance, close = byte_progress(total, "writing release")
    files = {}
    try:
        for name, package in packages.items():
            digest = save_package(package, staging / name, advance)
            files[name] = {"bytes": (staging / name).stat().st_size, "sha256": digest}
    finally:
        close()
    return files


def _tokenizer_facts(tokenizer: Optional[CompressionRelease]) -> Optional[dict[str, Any]]:
    if tokenizer is None:
        return None
    return {"reference": tokenizer.reference, "pretrained": tokenizer.pretrained,
            "source": None if tokenizer.source is None else file_facts(tokenizer.source),
            "key": tokenizer.state_key,
            **(state_facts(tokenizer.state) if tokenizer.state is not None else {})}
