"""Config repairs: equivalent forms of an xp.cfg that stock audiocraft can load.

Only rewrites that leave the model unchanged belong here; each is recorded in the manifest
and logged. Anything that would change behaviour (e.g. MusicGen's segment_duration assertion)
is left to validation to report.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from ..untrusted.xp_config import raw_value

logger = logging.getLogger(__name__)


def loadable_config(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """Return ``cfg`` (a repaired copy if needed) and the list of repairs made."""
    repairs = []
    if cfg._get_node("conditioners", throw_on_missing_key=False) is not None \
            and raw_value(cfg, "conditioners") is None:
        # a copy without the source's flags (struct, read-only): the source stays as read
        content = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(content, dict)  # cfg is a DictConfig
        content["conditioners"] = {}
        cfg = OmegaConf.create(content)
        repairs.append("conditioners: null -> {} (audiocraft's load_lm_model crashes on null: "
                       "_delete_param tests membership in None; {} builds the same "
                       "unconditioned model)")
    for repair in repairs:
        logger.warning("config repair: %s", repair)
    return cfg, repairs
