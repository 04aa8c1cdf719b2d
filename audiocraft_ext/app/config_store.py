"""The schemas of :mod:`audiocraft_ext.config` in Hydra's ConfigStore, for ``conf/`` to extend."""

from hydra.core.config_store import ConfigStore

from ..config import OPTIONS, ExportConfig


def register_configs() -> None:
    """Register the schemas that ``conf/`` YAML files extend: ``schema/<group>/<name>``."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="export", node=ExportConfig)
    for group, options in OPTIONS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
