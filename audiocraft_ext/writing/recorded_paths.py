"""How a release records the paths it was made from, so that sharing it shares nothing private.

A release travels (a colleague, a cluster folder, the Hugging Face Hub); the absolute paths of
the machine that made it name home folders, user names and cluster layouts. By default every
path a release records (``export.json``, the model card, ``export_config.yaml`` and the
``xp.cfg`` inside the release files) is written relative to the Dora dir when it lies inside
it (``xps/<sig>/checkpoint.th``), else as its last component; ``output.record_paths=absolute``
keeps them as given (and ``xp.cfg`` exactly as the checkpoint holds it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import OmegaConf

# How a re-runnable config (export_config.yaml) names the Dora dir: AudioCraft users' own
# variable, else the current folder (re-run from the Dora dir).
DORA_DIR_VARIABLE = "${oc.env:AUDIOCRAFT_DORA_DIR,.}"
# ... and a path outside it: required again (Hydra's "???"), so that a re-run names it rather
# than finding a different file of the same name
REQUIRED = "???"


@dataclass(frozen=True)
class PathRecorder:
    """Turns the paths a release records into their shareable form."""

    dora_dir: Path | None
    absolute: bool = False
    # paths inside the Dora dir start with DORA_DIR_VARIABLE, others are REQUIRED (a config to
    # re-run), instead of relative paths and names (a record to read)
    rerunnable: bool = False

    def path(self, path: str | Path) -> str:
        """``path`` as the release records it."""
        if self.absolute:
            return str(path)
        text = str(path)
        if not _looks_absolute(text):
            return text
        full = Path(os.path.abspath(os.path.expanduser(text)))
        if self.dora_dir is not None:
            root = Path(os.path.abspath(self.dora_dir))
            if full.is_relative_to(root):
                inside = full.relative_to(root).as_posix()
                if self.rerunnable:
                    return f"{DORA_DIR_VARIABLE}/{inside}" if inside != "." \
                        else DORA_DIR_VARIABLE
                return inside
        if self.rerunnable:
            return REQUIRED
        return PurePosixPath(full).name or "."

    def values(self, value: Any, changed: list[str] | None = None, key: str = "") -> Any:
        """A copy of a nest of dicts and lists with every absolute path recorded; the dotted
        keys of the values changed are appended to ``changed``."""
        return _map_strings(value, self._recorded, changed, key)

    def overrides(self, argv: list[str]) -> list[str]:
        """Command-line overrides (``key=value``) with their absolute paths recorded."""
        return [f"{k}={self._recorded(v)}" if sep else self._recorded(k)
                for k, sep, v in (o.partition("=") for o in argv)]

    def yaml_config(self, text: str) -> tuple[str, list[str]]:
        """An ``xp.cfg`` YAML text with its absolute paths recorded (interpolations left as
        they are), and the keys changed; the text itself when nothing changes."""
        if self.absolute:
            return text, []
        content = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        changed: list[str] = []
        recorded = self.values(content, changed)
        if not changed:
            return text, []
        return OmegaConf.to_yaml(OmegaConf.create(recorded)), changed

    def _recorded(self, text: str) -> str:
        if self.absolute:
            return text
        home = str(Path.home())
        if not _looks_absolute(text):
            # a path inside a longer value (an override's list, an interpolation's default)
            return text.replace(home, "~") if home != "/" and home in text else text
        # An interpolation is a template resolved where the config is loaded (audiocraft's
        # `/checkpoint/${oc.env:USER}/...`): kept, unless it spells this machine's home out.
        if "${" in text and home not in text:
            return text
        return self.path(text)


def _looks_absolute(text: str) -> bool:
    # "//sig/SIG", "//pretrained/NAME", "//reference/..." are audiocraft's references, not paths
    return (text.startswith("/") and not text.startswith("//")) or text == "~" \
        or text.startswith("~/")


def _map_strings(value: Any, change: Callable[[str], str], changed: list[str] | None,
                 key: str) -> Any:
    if isinstance(value, dict):
        return {k: _map_strings(v, change, changed, f"{key}.{k}" if key else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, change, changed, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        new = change(value)
        if new != value and changed is not None:
            changed.append(key)
        return new
    return value
