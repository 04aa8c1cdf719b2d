"""A checkpoint's ``xp.cfg``, treated as data.

An XP config carries interpolations: ``${sample_rate}`` (another key of the same config) and
resolver calls such as ``${oc.env:USER}``, which read the machine that resolves them. The
exporter never resolves either against this machine: the values it needs are read raw (an
interpolation there is an error that says so), and while stock audiocraft builds a model from
a release's config, no resolver is registered, so ``${oc.env:SECRET}`` fails instead of
putting this machine's secret into a model, a log line or a manifest.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, ListConfig, Node, OmegaConf
from omegaconf.basecontainer import BaseContainer
from omegaconf.errors import OmegaConfBaseException

from ..errors import ExportError, first_line, shown
from ..families import family_of
from .allowlist import PickledConfig, config_data

_REFERENCE = re.compile(r"^\$\{([\w.]+)\}$")  # a plain reference to another key


def xp_config(pkg: Mapping[str, Any], source: str) -> DictConfig:
    """The checkpoint's ``xp.cfg`` as a fresh config made from its plain data: no flags, no
    resolver cache, nothing of the pickled objects but their values."""
    cfg = pkg.get("xp.cfg")
    try:
        if isinstance(cfg, PickledConfig) and cfg.kind == "DictConfig":
            data = config_data(cfg)
        elif isinstance(cfg, DictConfig):  # a trusted legacy file, read by torch.load
            data = OmegaConf.to_container(cfg, resolve=False)
        else:
            raise ExportError(_not_a_solver_checkpoint(pkg, source))
        if not isinstance(data, dict):
            raise ValueError(f"a {type(data).__name__} where a mapping belongs")
        return OmegaConf.create(data)
    except (ValueError, OmegaConfBaseException) as exc:
        raise ExportError(f"{source}: its xp.cfg is damaged ({first_line(exc)})") from exc


def _not_a_solver_checkpoint(pkg: Mapping[str, Any], source: str) -> str:
    """Why a file without a config in ``xp.cfg`` cannot be exported, and what to do instead."""
    cfg = pkg.get("xp.cfg")
    if pkg.get("exported") is True and isinstance(cfg, str):  # audiocraft's export_lm's format
        solver = _SOLVER_LINE.search(cfg[:MAX_SCANNED])
        model_class = family_of(solver[1] if solver else None).model_class or "MusicGen"
        folder = posixpath.dirname(source) or "."
        return (f"{source} is a release file (exported, its xp.cfg is YAML text), not a "
                f"training checkpoint: it needs no export; load its folder with "
                f"{model_class}.get_pretrained({folder!r})")
    if cfg is None:
        if "state_dict" in pkg:
            what = "a {'state_dict': ...} file, as another trainer writes it"
        elif pkg and all(_is_tensor(v) for v in pkg.values()):
            what = "a plain {name: tensor} state dict"
        else:
            what = "no xp.cfg key"
        if what == "no xp.cfg key":
            return (f"{source} has no xp.cfg config ({what}): audiocraft-ext exports AudioCraft "
                    "solver checkpoints (a Dora XP's checkpoint.th, with their xp.cfg) of "
                    "MusicGen, AudioGen, MAGNeT and EnCodec (compression) solvers")
        return (f"{source} has no xp.cfg config ({what}): weights without their config are "
                f"released with input=weights input.path={source} input.base=BASE, where BASE "
                "(an AudioCraft release folder, training checkpoint or Hub name) gives the "
                "architecture and the compression model")
    return (f"{source} has no xp.cfg config ({type(cfg).__name__}): not an AudioCraft solver "
            "checkpoint")


_SOLVER_LINE = re.compile(r"^solver: *([\w-]+) *$", re.MULTILINE)
MAX_SCANNED = 1 << 20  # characters of a release's xp.cfg text searched for its solver


def _is_tensor(value: Any) -> bool:
    """A tensor as the loader returns it (torch's, or a lazy one), told without importing
    torch: by its type's name."""
    return "Tensor" in type(value).__name__


def raw_value(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """The value at dotted ``key`` as written, interpolations unresolved (``"${...}"``);
    ``default`` when a key on the way is absent, null or ``???``."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_interpolation():
            return default
        node = node._get_node(part, throw_on_missing_key=False)
        if node is None or node._is_missing():
            return default
    if node._is_interpolation() or not isinstance(node, DictConfig):
        value = node._value()
        return default if value is None else value
    return None if node._is_none() else node


def needed_value(cfg: DictConfig, key: str, source: str, default: Any = None) -> Any:
    """:func:`raw_value`, refusing an interpolation: the exporter needs the literal value."""
    value = raw_value(cfg, key, default)
    if isinstance(value, str) and "${" in value:
        raise ExportError(f"{source}: xp.cfg's {key} is an interpolation ({shown(value)}), "
                          "which the exporter never resolves (it could read this machine's "
                          "environment); write the value itself into the config")
    return value


@contextmanager
def no_resolvers() -> Iterator[None]:
    """Run a block with no OmegaConf resolver registered (``${oc.env:...}`` and the like
    fail as unsupported); references to other keys still resolve."""
    saved = BaseContainer._resolvers
    BaseContainer._resolvers = {}
    try:
        yield
    finally:  # keep what a module imported meanwhile registered for itself
        BaseContainer._resolvers = {**saved, **BaseContainer._resolvers}


def literal_value(cfg: DictConfig, key: str) -> Any:
    """The literal at dotted ``key``, following plain ``${other.key}`` references within the
    config; None when absent or not a literal (a resolver such as ``${oc.env:...}``, a cycle).
    A list comes back as a plain list."""
    for _ in range(8):  # a bound keeps a cycle of references finite
        try:
            found = raw_value(cfg, key)
        except OmegaConfBaseException:
            return None
        match = _REFERENCE.match(found) if isinstance(found, str) else None
        if match is None:
            break
        key = match.group(1)
    if isinstance(found, str) and "${" in found:
        return None
    if isinstance(found, ListConfig):
        return OmegaConf.to_container(found, resolve=False)
    if isinstance(found, list):  # raw_value gives a list's nodes
        return [item._value() if isinstance(item, Node) else item for item in found]
    return found
