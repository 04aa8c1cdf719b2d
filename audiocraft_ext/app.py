"""What export_app.py runs once Hydra has composed the configuration."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from .config import CheckpointInput, DemoInput, ExportConfig, InputConfig, XPInput
from .errors import ExportError
from .exporter import ExportResult, export_release
from .sources import CheckpointSource, resolve_checkpoint, resolve_signature

logger = logging.getLogger(__name__)


def resolve_input(spec: InputConfig) -> CheckpointSource:
    """The checkpoint an ``input`` option designates (writing the demo XPs first for ``demo``)."""
    if isinstance(spec, DemoInput):
        from .demo import write_demo_xps

        logger.info("input=demo: writing a tiny MusicGen XP and its EnCodec XP to %s",
                    spec.dora_dir)
        return resolve_checkpoint(write_demo_xps(spec.dora_dir))
    if isinstance(spec, CheckpointInput):
        return resolve_checkpoint(spec.path)
    if isinstance(spec, XPInput):
        if spec.path and spec.sig:
            raise ExportError("input=xp takes input.sig=SIG or input.path=XP_FOLDER, not both")
        if spec.path:
            return resolve_checkpoint(spec.path, spec.epoch)
        if spec.sig:
            return resolve_signature(spec.sig, spec.dora_dir, spec.epoch)
        raise ExportError("input=xp needs input.sig=SIG (with input.dora_dir=DIR or "
                          "AUDIOCRAFT_DORA_DIR) or input.path=XP_FOLDER")
    raise TypeError(f"unknown input {spec!r}")


def run(cfg: DictConfig) -> ExportResult:
    """Export the checkpoint the composed ``cfg`` designates and log a summary."""
    try:
        spec: ExportConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except MissingMandatoryValue as exc:
        raise ExportError(f"{exc.full_key} is required: add {exc.full_key}=... to the command"
                          ) from None
    source = resolve_input(spec.input)
    out_dir = (Path(spec.output.dir) if spec.output.dir
               else Path(HydraConfig.get().runtime.output_dir) / source.name)
    result = export_release(
        source, out_dir, state=spec.state.select, compression=spec.compression,
        validate=spec.validate, dtype=spec.output.dtype, overwrite=spec.output.overwrite,
        trust=spec.input.trust,
        config=OmegaConf.to_container(cfg, resolve=True))
    _log_summary(result)
    return result


def _log_summary(result: ExportResult) -> None:
    m = result.manifest
    logger.info("source  %s", m["source"]["path"])
    logger.info("state   %s: %d tensors, %d parameters, %s", m["state"]["key"],
                m["state"]["tensors"], m["state"]["parameters"],
                ", ".join(f"{n} x {d}" for d, n in m["state"]["dtypes"].items()))
    tokenizer = m["compression"]
    logger.info("tokenizer %s", tokenizer["reference"] if tokenizer else "none")
    for name, facts in m["files"].items():
        logger.info("file    %s  %d bytes  sha256 %s", name, facts["bytes"], facts["sha256"][:16])
    v = m["validation"]
    checks = ", ".join(f"{c['check']} {'ok' if c['ok'] else 'FAILED'}" for c in v["checks"])
    logger.info("validate=%s: %s%s", v["level"], checks or "nothing checked",
                "".join(f"; skipped {s}" for s in v["skipped"]))
    logger.info("release %s", result.release_dir)
