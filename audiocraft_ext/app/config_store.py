"""The schemas of :mod:`audiocraft_ext.config` in Hydra's ConfigStore, for ``conf/`` to extend,
and the resolver that lists the user's config groups in ``--help``."""

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ..config import CONF_DIR, OPTIONS, ExportConfig

# conf/export_hydra.yaml's help template: ${audiocraft_export.groups:}
GROUPS_RESOLVER = "audiocraft_export.groups"


def register_configs() -> None:
    """Register the schemas that ``conf/`` YAML files extend: ``schema/<group>/<name>``; and
    the resolver of ``--help``'s config groups."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="export", node=ExportConfig)
    for group, options in OPTIONS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    OmegaConf.register_new_resolver(GROUPS_RESOLVER, user_groups, replace=True)


def user_groups() -> str:
    """The config groups a user chooses from, one line each (``input: checkpoint, demo, xp``),
    as Hydra's ``$APP_CONFIG_GROUPS`` writes them but without the internal ``schema/*``
    groups (the structured configs the YAML options extend) and Hydra's own."""
    lines = []
    for folder in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            lines.append(f"{folder.name}: {', '.join(options)}")
    return "\n".join(lines)
