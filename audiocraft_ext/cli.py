"""The command line: ``audiocraft-export``, ``python -m audiocraft_ext``, ``python export_app.py``.

The Hydra configs are the package's ``conf/`` folder (in a checkout, the top-level ``conf/``
it links to), so an installed package finds them from any working directory.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_configs
from .errors import ExportError

CONF_DIR = str(Path(__file__).resolve().parent / "conf")

register_configs()
# Emitted by audiocraft's EnCodec on every build; says nothing about the export.
warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
logger = logging.getLogger("export_app")


# What the AudioCraft environment must hold (not pip dependencies: see requirements/runtime.txt).
REQUIRED = {"torch": (2, 1), "audiocraft": (1, 0)}


def _check_environment() -> None:
    for name, minimum in REQUIRED.items():
        try:
            found = version(name)
        except PackageNotFoundError as exc:
            raise ExportError(f"{name} is not installed in this environment: install "
                              "audiocraft-ext into your AudioCraft environment (see README)"
                              ) from exc
        numbers = tuple(int(part) for part in re.findall(r"\d+", found)[:2])
        if numbers < minimum:
            raise ExportError(f"{name} {found} is installed; audiocraft-ext needs "
                              f"{name} >= {'.'.join(map(str, minimum))}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> str | None:
    """Export (or inspect) the checkpoint the composed config designates; print the release."""
    try:
        _check_environment()
        from .app import run_job  # imports torch: kept out of --help and --cfg

        result = run_job(cfg)
    except ExportError as exc:
        # One line by default; HYDRA_FULL_ERROR=1 (as for Hydra's own errors) shows the chain.
        logger.error("%s", exc, exc_info=os.environ.get("HYDRA_FULL_ERROR") == "1")
        sys.exit(1)
    if result is None:  # mode=inspect or list, or a failed job of a multirun (in its summary)
        return None
    print(result.release_dir)
    return str(result.release_dir)
