"""Export an AudioCraft training checkpoint to a release folder that stock AudioCraft loads.

    python export_app.py                                   # demo: tiny XP, exported end to end
    python export_app.py input=checkpoint input.path=/path/to/xps/SIG/checkpoint.th
    python export_app.py input=xp input.dora_dir=DIR input.sig=SIG state=best
    python export_app.py --help                            # groups, options and defaults
"""

import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from audiocraft_ext.config import register_configs
from audiocraft_ext.errors import ExportError

register_configs()
# Emitted by audiocraft's EnCodec on every build; says nothing about the export.
warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
logger = logging.getLogger("export_app")


# Absolute, so that the `audiocraft-export` console script (which imports this module) finds it.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> Optional[str]:
    from audiocraft_ext.app import run_job  # imports torch: kept out of --help and --cfg

    try:
        result = run_job(cfg)
    except ExportError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    if result is None:  # a failed job of a multirun, recorded for the sweep summary
        return None
    print(result.release_dir)
    return str(result.release_dir)


if __name__ == "__main__":
    main()
