"""One Hydra job of the app: export or inspect what the composed configuration designates."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf, open_dict

from ..config import CONF_DIR, DemoInput, ExportConfig, InputConfig, Mode, RecordPaths
from ..errors import ExportError, command_line_messages, first_line, setting
from ..pipeline.export import ExportResult, export
from ..untrusted.sources import (
    CheckpointSource,
    WeightsSource,
    resolve_checkpoint,
    resolve_input,
)
from ..writing.recorded_paths import REQUIRED, PathRecorder
from ..writing.release_format import CONFIG_FILE
from .sweep_summary import JOB_RECORD

logger = logging.getLogger(__name__)


# the config groups of conf/export.yaml, in their defaults-list order
GROUPS = ("input", "state", "compression", "output", "validate")
# conf/export_hydra.yaml: the app's hydra: settings (logging on stderr, sweep summary callback,
# run dirs, help), which a re-run from a release must get from the package like the original
HYDRA_SETTINGS = "export_hydra"
PRIMARY_CONFIG = "export"  # conf/export.yaml; a re-run names a release's export_config
# the values the job reads as paths, relative to the folder it runs from ("//sig/..." aside)
PATH_KEYS = ("input.path", "input.dora_dir", "compression.path", "output.dir", "list.releases")


def run_job(cfg: DictConfig) -> ExportResult | None:
    """One Hydra job: export, log, and leave a record of the outcome for the sweep summary.

    In a single run an ExportError propagates (the app exits 1); in a multirun it is
    recorded instead, so that one bad checkpoint does not stop the sweep.
    """
    started = time.perf_counter()
    hydra_cfg = cast(DictConfig, HydraConfig.get())  # typed as its schema, a DictConfig
    record: dict[str, Any] = {"job": OmegaConf.select(hydra_cfg, "job.num", default=None),
                              "overrides": list(HydraConfig.get().overrides.task)}
    result = None
    try:
        with command_line_messages():
            result = run(cfg)
        record.update(status="ok", **(_result_facts(result) if result else {}))
    except Exception as exc:
        record.update(status="failed", error=str(exc) if isinstance(exc, ExportError)
                      else f"{type(exc).__name__}: {first_line(exc)}")
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        if isinstance(exc, ExportError):
            logger.error("%s", exc, exc_info=os.environ.get("HYDRA_FULL_ERROR") == "1")
        else:
            logger.error("unexpected failure:\n%s", traceback.format_exc())
    except BaseException as exc:  # a signal or an exit: recorded, then let through
        record.update(status="failed", error=first_line(exc))
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - started, 3)
        out = Path(HydraConfig.get().runtime.output_dir) / JOB_RECORD
        out.write_text(json.dumps(record, indent=2) + "\n")
    return result


def _result_facts(result: ExportResult) -> dict[str, Any]:
    m = result.manifest
    _, main = m.main_file()
    return {"source": m.source.path, "release": str(result.release_dir), "state": m.state.key,
            "bytes": main.bytes, "sha256": main.sha256,
            "validation": m.validation.passed if m.validation else "none"}


def rerunnable_config(cfg: DictConfig, recorder: PathRecorder) -> DictConfig:
    """The composed config as a primary config: the chosen options, the app's hydra settings
    (by name: nothing of this run's dirs or overrides) and every value, its paths recorded as
    ``recorder`` says."""
    choices = HydraConfig.get().runtime.choices
    values = recorder.values(_absolute_paths(_plain_config(cfg)))
    for group in GROUPS:
        # what the chosen option's own file sets (validate/load.yaml: level) is left to it, so
        # that a re-run with another option of the group (validate=none) takes that option's
        for key, value in _option_values(group, choices[group]).items():
            if values.get(group, {}).get(key) == value:
                del values[group][key]
    defaults = ["schema/export@_here_", *({g: choices[g]} for g in GROUPS), HYDRA_SETTINGS,
                "_self_"]
    return OmegaConf.create({"defaults": defaults, **values})


def _absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the relative paths of PATH_KEYS made absolute (against the folder the
    export ran from, as the job read them), so that they are recorded as absolute ones are:
    inside the Dora dir relative to it, else ``???``. A re-run, started anywhere, never
    reads a path relative to another folder than the one it was given in."""
    for key in PATH_KEYS:
        group, name = key.split(".")
        value = values.get(group, {}).get(name)
        if isinstance(value, str) and value and not value.startswith(("/", "~")):
            values[group][name] = os.path.abspath(value)
    return values


def _option_values(group: str, option: str) -> dict[str, Any]:
    """The values a group option's YAML file sets itself (its defaults list aside)."""
    path = CONF_DIR / group / f"{option}.yaml"
    content = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    assert isinstance(content, dict)  # an option file is a mapping
    return {str(k): v for k, v in content.items() if k != "defaults"}


def run(cfg: DictConfig) -> ExportResult | None:
    """Export (or, with mode=inspect, describe) the checkpoint ``cfg`` designates; with
    mode=list, describe every XP of its Dora dir."""
    _refuse_recorded_missing(cfg)
    try:
        spec = cast(ExportConfig, OmegaConf.to_object(cfg))  # the schema's instance
    except MissingMandatoryValue as exc:
        raise ExportError(f"{exc.full_key} is required: add {exc.full_key}=... to the command"
                          ) from exc
    if spec.mode is Mode.list:  # a whole Dora dir: no one checkpoint to resolve
        from .listing import list_command

        print(list_command(spec.input, spec.list))
        return None
    source = _source(spec.input)
    if spec.mode is Mode.inspect:
        from .inspection import (
            format_inspection,
            format_weights_inspection,
            inspect_checkpoint,
            inspect_weights,
        )

        if isinstance(source, WeightsSource):
            print(format_weights_inspection(inspect_weights(source, spec),
                                            as_json=spec.inspect.json))
        else:
            print(format_inspection(inspect_checkpoint(source, trust=spec.input.trust),
                                    as_json=spec.inspect.json))
        return None
    if not spec.output.dir:
        spec.output.dir = str(Path(HydraConfig.get().runtime.output_dir) / source.name)
    recorder = PathRecorder(source.dora_dir,
                            absolute=spec.output.record_paths is RecordPaths.absolute,
                            rerunnable=True)
    result = export(source, spec, config=_plain_config(cfg), extra_files={
        CONFIG_FILE: OmegaConf.to_yaml(rerunnable_config(cfg, recorder))})
    _log_summary(result)
    return result


def _refuse_recorded_missing(cfg: DictConfig) -> None:
    """A re-run from a release's config (any primary config but conf/export.yaml) must be
    given again what the release recorded as ``???`` (a path outside the Dora dir).
    Composition drops a ``???`` that the schema has a default for (OmegaConf's merge keeps
    the default), and the default (output.dir: the run dir) would silently replace it: the
    recorded file itself says what must be given."""
    hydra_cfg = HydraConfig.get()
    config_name = hydra_cfg.job.config_name
    if config_name in (None, PRIMARY_CONFIG):
        return
    recorded = _recorded_config(config_name)
    if recorded is None:
        return
    given = {o.lstrip("+~").partition("=")[0] for o in hydra_cfg.overrides.task}
    for key in sorted(OmegaConf.missing_keys(recorded)):
        if key in given or key.split(".")[0] in given:  # given again, or its group changed
            continue
        raise ExportError(f"{key} is recorded as {REQUIRED} in {config_name}.yaml (it named a "
                          f"private path): give it again, e.g. {_named(key, '...')}")


def _recorded_config(config_name: str) -> DictConfig | None:
    """The primary config file ``config_name`` as written, from the folders of Hydra's
    search path (a re-run's --config-dir), without its defaults list."""
    for source in HydraConfig.get().runtime.config_sources:
        if source.schema != "file":
            continue
        path = Path(source.path) / f"{config_name}.yaml"
        if path.is_file():
            content = OmegaConf.load(path)
            if isinstance(content, DictConfig):
                with open_dict(content):
                    content.pop("defaults", None)
                return content
    return None


def _named(key: str, value: str) -> str:
    """``key=value`` as :func:`setting` writes it, or as given for a key outside the schema."""
    try:
        return setting(key, value)
    except KeyError:
        return f"{key}={value}"


def _source(spec: InputConfig) -> CheckpointSource:
    """The checkpoint ``spec`` designates; for ``input=demo``, the demo XPs written first."""
    if isinstance(spec, DemoInput):
        from .demo import write_demo_xps

        logger.info("input=demo: writing a tiny MusicGen XP and its EnCodec XP to %s",
                    spec.dora_dir)
        return resolve_checkpoint(write_demo_xps(spec.dora_dir))
    return resolve_input(spec)


def _plain_config(cfg: DictConfig) -> dict[str, Any]:
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)  # the composed config is a DictConfig
    return {str(k): v for k, v in values.items()}


def _log_summary(result: ExportResult) -> None:
    m = result.manifest
    logger.info("source  %s", m.source.path)
    logger.info("state   %s: %d tensors, %d parameters, %s", m.state.key, m.state.tensors,
                m.state.parameters, ", ".join(f"{n} x {d}" for d, n in m.state.dtypes.items()))
    logger.info("compression model %s", m.compression.reference if m.compression else "none")
    for name, facts in m.files.items():
        logger.info("file    %s  %d bytes  sha256 %s", name, facts.bytes, facts.sha256[:16])
    if m.validation is not None:
        v = m.validation
        checks = ", ".join(f"{c.check} {'ok' if c.ok else 'FAILED'}" for c in v.checks)
        logger.info("validate=%s: %s%s", v.level, checks or "nothing checked",
                    "".join(f"; skipped {s}" for s in v.skipped))
    logger.info("release %s", result.release_dir)
