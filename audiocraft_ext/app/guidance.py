"""One-line explanations of the mistakes Hydra finds while composing the command's config.

Hydra's own message for a key of another option (``input.sig=X`` without ``input=xp``) is
"Key 'sig' not in 'DemoInput'" with the advice to append ``+input.sig=X``, which only fails
later. Here the groups' options (``conf/<group>/*.yaml``) and their schemas (``config.py``)
say which option holds the key, or which keys are close to a misspelt one.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ..errors import first_line, one_line

SCHEMA_PREFIX = "/schema/"


def explain(exc: BaseException, conf_dir: str | Path) -> str:
    """One line for a composition error: the fix when the mistake is known, else Hydra's own
    words (never less than Hydra's first lines say)."""
    cause = exc.__cause__
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file \
            and "/" in exc.missing_cfg_file:
        return unknown_option(exc.missing_cfg_file, exc.options)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key and \
            dataclasses.is_dataclass(cause.object_type):
        return unknown_key(str(cause.full_key), cause.object_type, Path(conf_dir))
    return hydra_words(exc)


def hydra_words(exc: BaseException) -> str:
    """What Hydra prints first for ``exc``: its opening lines, then its OmegaConf cause's."""
    head = str(exc).strip().split("\n\n")[0].splitlines()
    if isinstance(exc.__cause__, OmegaConfBaseException):
        head.append(first_line(exc.__cause__))
    return one_line("; ".join(line.strip() for line in head if line.strip()))


def unknown_option(missing: str, options: Sequence[str]) -> str:
    """``input=xpp``: the group's options, the closest first."""
    group, _, name = missing.rpartition("/")
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean {group}={close[0]}?" if close else ""
    return one_line(f"no option {group}={name} (options: {', '.join(sorted(options))}){hint}")


def unknown_key(full_key: str, schema: type, conf_dir: Path) -> str:
    """A key the chosen option lacks: the option that has it, else the closest keys."""
    parent, _, key = full_key.rpartition(".")
    options = group_options(conf_dir / parent) if parent else {}
    current = _current(parent, schema, options)
    owners = [name for name, option in options.items() if key in _keys(option)]
    if owners:
        instead = f" (not {current})" if current else ""
        return one_line(f"{full_key} belongs to {_either(parent, owners)}{instead}: "
                        f"add {_either(parent, owners)}")
    where = f" in {current}" if current else ""
    return one_line(f"no key {full_key}{where}; {_closest(parent, key, schema, options)}")


def group_options(group_dir: Path) -> dict[str, type]:
    """The options of a config group (its YAML files) and the schema each extends."""
    options = {}
    for path in sorted(group_dir.glob("*.yaml")):
        option = OmegaConf.load(path)
        defaults = (option.get("defaults") or []) if isinstance(option, DictConfig) else []
        schemas = [d for d in defaults if isinstance(d, str) and d.startswith(SCHEMA_PREFIX)]
        if schemas:  # "/schema/<group>/<name>@_here_", stored as "schema/<group>/<name>"
            stored = ConfigStore.instance().load(f"{schemas[0][1:].split('@')[0]}.yaml")
            schema = OmegaConf.get_type(stored.node)
            if schema is not None:
                options[path.stem] = schema
    return options


def _closest(parent: str, key: str, schema: type, options: dict[str, type]) -> str:
    """"did you mean ...?" over the keys of ``schema``, then of the group's other options."""
    dotted = f"{parent}." if parent else ""
    valid = _keys(schema)
    found = difflib.get_close_matches(key, valid, n=2)
    if found:
        return f"did you mean {' or '.join(dotted + k for k in found)}?"
    elsewhere = {k: name for name, option in options.items() for k in _keys(option)}
    found = difflib.get_close_matches(key, list(elsewhere), n=1)
    if found:
        return f"did you mean {dotted}{found[0]} (with {parent}={elsewhere[found[0]]})?"
    return f"its keys: {', '.join(dotted + k for k in valid)}"


def _current(group: str, schema: type, options: dict[str, type]) -> str:
    """The option in effect, known by its schema; the group when its options share one."""
    chosen = [name for name, option in options.items() if option is schema]
    return f"{group}={chosen[0]}" if len(chosen) == 1 else group if chosen else ""


def _either(group: str, names: list[str]) -> str:
    return " or ".join(f"{group}={name}" for name in names)


def _keys(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
