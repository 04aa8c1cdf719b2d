"""audiocraft's, torch's and the network's failures during validation, explained in one line."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import UnsupportedInterpolationType

from ..errors import ExportError, setting, shown
from ..untrusted.xp_config import raw_value


def refused_resolver(exc: Exception) -> str | None:
    """Say why ``${resolver:...}`` failed: no resolver runs while validating (xp_config)."""
    found = re.match(r"Unsupported interpolation type (\S+)", str(exc))
    if not isinstance(exc, UnsupportedInterpolationType) or found is None:
        return None
    return (f"xp.cfg uses the resolver {shown(found[1])}, which is never run on the exporting "
            "machine (it could read its environment); write the value itself into the config")


def state_dict_mismatch(message: str) -> str | None:
    """Summarise torch's multi-line load_state_dict error in one line, or None."""
    if not message.startswith("Error(s) in loading state_dict"):
        return None
    parts, shapes = [], []
    for line in message.splitlines()[1:]:
        line = line.strip()
        keys = re.match(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", line)
        if keys:
            names = re.findall(r'"([^"]+)"', keys[2])
            parts.append(f"{len(names)} {keys[1].lower()} key{'s' * (len(names) != 1)} "
                         f"(e.g. {names[0] if names else '?'})")
        size = re.match(r"size mismatch for ([^:]+): copying a param with shape "
                        r"torch.Size\((\[.*?\])\) from checkpoint, the shape in current model "
                        r"is torch.Size\((\[.*?\])\)", line)
        if size:
            shapes.append(f"{size[1]}: {size[2]} in the file, {size[3]} for the config")
    if shapes:
        parts.append(f"{len(shapes)} wrong shape{'s' * (len(shapes) != 1)} (e.g. {shapes[0]})")
    return "the state does not match its xp.cfg: " + ", ".join(parts)


def load_pretrained(load: Callable[[], Any], pretrained: str | None) -> Any:
    """Run ``load``; explain the failure of a //pretrained/ compression model that needs the
    network (any other failure is the check's own, and is reported as such)."""
    try:
        return load()
    except Exception as exc:
        if pretrained is None or not from_the_network(exc):
            raise
        raise ExportError(
            f"the release points at the pretrained compression model {pretrained!r}, which "
            f"could not be fetched here ({type(exc).__name__}); it comes from the Hugging Face "
            "hub on first use: run where the hub or its cache (HF_HOME) is reachable, or "
            f"validate offline with {setting('validate.compression_model', '<local copy>')}"
            ) from exc


@contextmanager
def text_encoder_explained(lm_cfg: DictConfig) -> Iterator[None]:
    """Explain a check that failed because the LM's T5 text encoder or its melody
    conditioner's demucs weights, which audiocraft loads with the LM, could not be loaded here
    (offline, not in the cache)."""
    try:
        yield
    except ExportError as exc:
        cause = exc.__cause__
        melody = _melody_weights_missing(cause)
        if melody:
            raise ExportError(melody) from exc
        t5 = _t5_conditioners(lm_cfg)
        # transformers says "cannot load" with an OSError (on 4.x without its cause)
        from audiocraft.modules.conditioners import T5Conditioner

        if not t5 or cause is None or not _raised_in(cause, T5Conditioner.__init__.__code__) \
                or not (isinstance(cause, OSError) or from_the_network(cause)):
            raise
        needs = ", ".join(f"{shown(model)} (text conditioner {shown(name)})"
                          for name, model in t5.items())
        raise ExportError(
            f"validation cannot build the LM: it needs the T5 model {needs}, which transformers "
            f"could not load here ({type(cause).__name__}); T5 comes from the Hugging Face Hub "
            "or a local cache (HF_HOME; HF_HUB_OFFLINE=1 reads only the cache): run where "
            "either holds it, or use validate=none, the one level that does "
            "not build the LM") from exc


def _melody_weights_missing(cause: BaseException | None) -> str | None:
    """What to say when the melody conditioner could not get demucs' htdemucs weights."""
    if cause is None:
        return None
    from audiocraft.modules.conditioners import ChromaStemConditioner

    if not _raised_in(cause, ChromaStemConditioner.__init__.__code__) \
            or not (isinstance(cause, OSError) or from_the_network(cause)):
        return None
    import torch

    cache = f"{torch.hub.get_dir()}/checkpoints"
    return (f"validation cannot build the LM: its melody conditioner (chroma_stem) needs "
            f"demucs' htdemucs weights, which torch.hub found neither in its cache ({cache}, "
            f"under TORCH_HOME) nor could download ({type(cause).__name__}); they come from "
            "dl.fbaipublicfiles.com on first use: run where it is reachable or put the file in "
            f"that cache, or use {setting('validate', 'none')}, the one level that does not "
            "build the model")


def _t5_conditioners(lm_cfg: DictConfig) -> dict[str, str]:
    """The LM's T5 conditioners (xp.cfg's ``conditioners``): name -> T5 model name."""
    conditioners = raw_value(lm_cfg, "conditioners")
    if not isinstance(conditioners, DictConfig):
        return {}
    names = [str(name) for name in conditioners]
    return {name: str(raw_value(lm_cfg, f"conditioners.{name}.t5.name", "?")) for name in names
            if raw_value(lm_cfg, f"conditioners.{name}.model") == "t5"}


def _raised_in(exc: BaseException, code: CodeType) -> bool:
    """Whether ``exc`` passed through the function whose code is ``code`` on its way up."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


# Failures to reach the hub, by class name (huggingface_hub, requests, urllib3 and httpx are
# not imported here): an offline machine, a missing cache entry, a refused or timed-out
# connection. A wrong model name (the hub's 404) is not among them: that is the check's own.
_NETWORK_FAILURES = frozenset({
    "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "Timeout", "TimeoutException", "NewConnectionError", "MaxRetryError",
    "NameResolutionError", "ProxyError", "SSLError"})


def from_the_network(exc: BaseException) -> bool:
    """Whether ``exc``, or a cause it chains, is a failure to reach the network."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)) \
                or type(current).__name__ in _NETWORK_FAILURES:
            return True
        # an explicit cause, else the exception being handled (unless the raise hid it)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return False
