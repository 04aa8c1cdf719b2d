"""Weights written by another trainer, read as data (``input=weights``): a bare state dict, a
one-level wrapper of one (Lightning's ``{'state_dict': ...}``), safetensors files (sharded
too), a transformers MusicGen folder, a PEFT adapter folder or an AudioCraft release folder.
Nothing here runs code from the files: pickles go through :mod:`.safe_load`, safetensors
through its own parser, JSON through :mod:`json`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, first_line, shown
from .lazy_tensors import SafetensorsTensor, TensorLike, is_tensor
from .safe_load import load_checkpoint
from .states import StateDict, checked_state

MAX_JSON_BYTES = 8 << 20  # config.json, adapter_config.json, a shard index
# One-level wrappers of a state dict, the most telling first: Lightning, plain PyTorch
# recipes, audiocraft's own best state, DDP, EMA trainers.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "best_state", "module", "ema",
                "state", "weights", "params", "lm")
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}
# what a transformers MusicGen folder stores its weights in, the preferred first
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json",
                        "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# transformers' model types of MusicGen (config.json's model_type)
MUSICGEN_TYPES = {"musicgen": "MusicgenForConditionalGeneration",
                  "musicgen_melody": "MusicgenMelodyForConditionalGeneration"}
ACCEPTED = ("a state dict file (.pt, .pth, .bin, .ckpt, .th, .safetensors), bare or wrapped "
            "one level down ({'state_dict': ...}), a transformers MusicGen folder (config.json "
            "with model.safetensors), a PEFT adapter folder (adapter_config.json with "
            "adapter_model.safetensors) or an AudioCraft release folder (state_dict.bin)")


@dataclass(frozen=True)
class WeightsFile:
    """What ``input.path`` holds, read without running code; tensors stay on disk."""

    kind: str  # "state dict", "transformers" or "peft adapter"
    path: Path
    state: StateDict  # as stored: AudioCraft's or transformers' names (the adapter's own)
    wrapper: str | None = None  # the key of the one-level wrapper that held the state
    config: dict[str, Any] | None = None  # config.json or adapter_config.json

    @property
    def described(self) -> str:
        """What it is, in a few words (messages, the manifest)."""
        wrapped = f" (under {self.wrapper!r})" if self.wrapper else ""
        return f"{self.kind}{wrapped}, {len(self.state)} tensors"


def read_safetensors(path: Path) -> dict[str, TensorLike]:
    """The tensors of a safetensors file, left on disk; a damaged file is one line."""
    from safetensors import SafetensorError, safe_open

    _regular(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            found: dict[str, TensorLike] = {}
            for name in f.keys():
                part = f.get_slice(name)
                dtype = SAFETENSORS_DTYPES.get(part.get_dtype())
                if dtype is None:
                    raise ExportError(f"{path}: tensor {shown(name)} is of dtype "
                                      f"{shown(part.get_dtype())}, which no MusicGen holds")
                found[name] = SafetensorsTensor(path, name, tuple(part.get_shape()), dtype)
            return found
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{path} is not a readable safetensors file "
                          f"({first_line(exc)})") from exc


def read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file (a config, an index)."""
    _regular(path)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ExportError(f"{path} is {path.stat().st_size:,} bytes, more than the "
                          f"{MAX_JSON_BYTES:,} accepted for a JSON config")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ExportError(f"{path} is not readable JSON ({first_line(exc)})") from exc
    if not isinstance(found, dict):
        raise ExportError(f"{path} holds a JSON {type(found).__name__}, not an object")
    return found


def _regular(path: Path) -> None:
    """A regular file, possibly through a link (a Hugging Face cache snapshot's files are
    links into its blobs): no device, FIFO or folder."""
    if not path.is_file():
        raise ExportError(f"{path} is not a regular file")


def read_weights(path: Path, trust: bool = False) -> WeightsFile:
    """Recognise and read ``path`` (a file or a folder of weights)."""
    if not path.exists():
        raise ExportError(f"{path}: no such weights file or folder")
    if path.is_dir():
        return _read_folder(path, trust)
    if path.suffix == ".safetensors":
        return WeightsFile("state dict", path, _checked(read_safetensors(path), path))
    return _read_pickled(path, trust)


def _read_folder(path: Path, trust: bool) -> WeightsFile:
    if (path / ADAPTER_CONFIG).exists():
        config = read_json(path / ADAPTER_CONFIG)
        if not (path / ADAPTER_WEIGHTS).exists():
            held = sorted(p.name for p in path.glob("adapter_model*"))
            raise ExportError(f"{path} is a PEFT adapter without {ADAPTER_WEIGHTS}"
                              + (f" (it holds {', '.join(held)}: save it with "
                                 "safe_serialization=True, the default since peft 0.7)"
                                 if held else ""))
        state = _checked(read_safetensors(path / ADAPTER_WEIGHTS), path / ADAPTER_WEIGHTS)
        return WeightsFile("peft adapter", path, state, config=config)
    if (path / "config.json").exists():
        config = read_json(path / "config.json")
        model_type = config.get("model_type")
        if model_type not in MUSICGEN_TYPES:
            raise ExportError(f"{path}/config.json is a transformers {shown(model_type)} model, "
                              f"not MusicGen ({', '.join(MUSICGEN_TYPES)})")
        return WeightsFile("transformers", path, _transformers_state(path, trust),
                           config=config)
    if (path / "state_dict.bin").is_file():  # an AudioCraft release folder: its LM weights
        return _read_pickled(path / "state_dict.bin", trust)
    raise ExportError(f"{path} is a folder of none of the accepted layouts: {ACCEPTED}")


def _transformers_state(folder: Path, trust: bool) -> StateDict:
    """A transformers folder's tensors: one file, or the shards its index names."""
    for name in TRANSFORMERS_WEIGHTS:
        path = folder / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            weight_map = read_json(path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ExportError(f"{path} has no weight_map")
            state: dict[str, TensorLike] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                if Path(shard).name != shard:  # the index is data: no "../" out of the folder
                    raise ExportError(f"{path} names the shard {shown(shard)} outside its folder")
                state.update(_shard(folder / shard, trust))
            return _checked(state, path)
        return _checked(_shard(path, trust), path)
    raise ExportError(f"{folder} has config.json but none of {', '.join(TRANSFORMERS_WEIGHTS)}")


def _shard(path: Path, trust: bool) -> dict[str, TensorLike]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    found = load_checkpoint(path, trust=trust)
    if not isinstance(found, dict):
        raise ExportError(f"{path} holds a {type(found).__name__}, not a state dict")
    return found


def _read_pickled(path: Path, trust: bool) -> WeightsFile:
    found = load_checkpoint(path, trust=trust)
    if not isinstance(found, dict):
        raise ExportError(f"{path} holds a {type(found).__name__}, not a state dict")
    if not found:
        raise ExportError(f"{path} holds no tensors (an empty dict)")
    if "xp.cfg" in found and found.get("exported") is not True:
        raise ExportError(f"{path} is an AudioCraft training checkpoint (it has its xp.cfg): "
                          f"export it with input=checkpoint input.path={path}")
    if found and all(is_tensor(v) for v in found.values()):
        return WeightsFile("state dict", path, _checked(found, path))
    wrappers = [key for key in found
                if isinstance(found[key], dict) and found[key]
                and all(is_tensor(v) for v in found[key].values())]
    if found.get("exported") is True and "best_state" in wrappers:  # a release file
        wrappers = ["best_state"]
    if not wrappers:
        keys = ", ".join(shown(k, 40) for k in list(found)[:8])
        raise ExportError(f"{path} holds no {{name: tensor}} state dict, at its top level or "
                          f"one level down (its keys: {keys or 'none'})")
    known = [key for key in WRAPPER_KEYS if key in wrappers]
    key = known[0] if known else wrappers[0]
    if len(wrappers) > 1 and not known:
        raise ExportError(f"{path} holds {len(wrappers)} state dicts "
                          f"({', '.join(shown(k, 40) for k in wrappers[:4])}) and none under a "
                          f"known name ({', '.join(WRAPPER_KEYS)}): save the LM's alone")
    return WeightsFile("state dict", path, _checked(found[key], path, key), wrapper=str(key))


def _checked(state: dict[Any, Any], path: Path, key: str = "state") -> StateDict:
    if not state:
        raise ExportError(f"{path} holds no tensors")
    return checked_state(state, key, str(path))


_AUDIOCRAFT_EMB = re.compile(r"(?P<prefix>.*?)emb\.(?P<k>\d+)\.weight")
_AUDIOCRAFT_LAYER = re.compile(r".*?transformer\.layers\.(\d+)\.")
_TRANSFORMERS_EMB = re.compile(r"(?P<prefix>.*?)model\.decoder\.embed_tokens\.(?P<k>\d+)\.weight")
_TRANSFORMERS_LAYER = re.compile(r".*?model\.decoder\.layers\.(\d+)\.")


def lm_layout(state: StateDict) -> dict[str, Any] | None:
    """What an LM state's shapes say of its model (names, codebooks, card, width, layers),
    for telling the user which base it needs; None when it holds no codebook embeddings."""
    for naming, emb, layer in (("AudioCraft", _AUDIOCRAFT_EMB, _AUDIOCRAFT_LAYER),
                               ("transformers", _TRANSFORMERS_EMB, _TRANSFORMERS_LAYER)):
        embeddings = {key: m for key in state if (m := emb.fullmatch(key))}
        if embeddings:
            first_key, first = min(embeddings.items(), key=lambda item: int(item[1]["k"]))
            rows, dim = (tuple(state[first_key].shape) + (0, 0))[:2]
            layers = {int(m.group(1)) for key in state if (m := layer.match(key))}
            # a whole transformers model's decoder is its "decoder." part: no prefix of its own
            prefix = first["prefix"] if first["prefix"] not in ("", "decoder.") \
                or naming == "AudioCraft" else ""
            return {"names": naming, "prefix": prefix or None,
                    "codebooks": len(embeddings), "card": rows - 1, "dim": dim,
                    "layers": len(layers)}
    return None
