"""The audiocraft release format: the files of a release folder and how each is written.

A release folder holds ``state_dict.bin`` and ``compression_state_dict.bin`` exactly as
``audiocraft.utils.export`` writes them, so ``MusicGen.get_pretrained(folder)`` loads it, plus
our ``export.json`` manifest, the ``export_config.yaml`` to re-run the export, the model card
``README.md`` and, unless turned off, ``training_curves.png`` and ``samples/`` (the clips
validation generated, each with its spectrogram). (:mod:`.publish` puts the folder in place.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ExportError
from ..untrusted.lazy_tensors import TensorLike
from .torch_writer import save_streaming
from .torch_zip import WrittenZip

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
MANIFEST_FILE = "export.json"
CONFIG_FILE = "export_config.yaml"  # the composed config: re-run with --config-dir/--config-name
MODEL_CARD_FILE = "README.md"  # the Hugging Face Hub renders it as the model card
CURVES_FILE = "training_curves.png"
RELEASE_FILES = frozenset({LM_FILE, COMPRESSION_FILE, MANIFEST_FILE, CONFIG_FILE,
                           MODEL_CARD_FILE, CURVES_FILE})
# output.transformers=true: transformers' model files and the T5 tokenizer's, the Hub's layout
TRANSFORMERS_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json",
                            "preprocessor_config.json")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
TRANSFORMERS_FILES = frozenset(TRANSFORMERS_MODEL_FILES + TOKENIZER_FILES)
RELEASE_FILES = RELEASE_FILES | TRANSFORMERS_FILES
SAMPLES_DIR = "samples"
# The clips a release may keep: generated (LMs) or encoded and decoded (EnCodec).
CLIP_NAMES = ("unconditional", "text", "melody_prompt", "melody", "input", "reconstruction")
SAMPLE_FILES = frozenset(f"{name}.{ext}" for name in CLIP_NAMES for ext in ("wav", "png"))
# output.onnx=true: the graphs Optimum and Transformers.js read, 8-bit ones beside them on
# request, each with the external data of a graph over 2 GB
ONNX_DIR = "onnx"
ONNX_GRAPHS = ("text_encoder", "decoder_model_merged", "encodec_decode")
ONNX_FILES = frozenset(f"{name}{kind}.onnx{data}" for name in ONNX_GRAPHS
                       for kind in ("", "_quantized") for data in ("", "_data"))
# the folders a release may hold, and the files each may hold
RELEASE_DIRS = {SAMPLES_DIR: SAMPLE_FILES, ONNX_DIR: ONNX_FILES}


def audiocraft_version() -> str:
    """The installed audiocraft's version, without importing it (a multi-second import)."""
    return version("audiocraft")


def release_package(state: Mapping[str, TensorLike], cfg: DictConfig) -> dict[str, Any]:
    """What export_lm and export_encodec write (an LM's state_dict.bin, or an EnCodec's
    compression_state_dict.bin): the flat state dict and the config as YAML."""
    return {"best_state": dict(state), "xp.cfg": OmegaConf.to_yaml(cfg),
            "version": audiocraft_version(), "exported": True}


def pointer_package(pretrained: str) -> dict[str, Any]:
    """What export_pretrained_compression_model writes for a released compression model."""
    return {"pretrained": pretrained, "exported": True, "version": audiocraft_version()}


def save_package(package: Mapping[str, Any], path: Path,
                 progress: Callable[[int], None] | None = None) -> WrittenZip:
    """Write a release file as torch.save would, streamed and fsync'ed; return its size,
    sha256 and records."""
    return save_streaming(dict(package), path, progress)


def json_text(data: Any) -> str:
    """``data`` as strict JSON (indented): a number JSON cannot hold (NaN, an infinity, from
    a checkpoint's history) is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(data: Mapping[str, Any], path: Path) -> None:
    write_text(json_text(data) + "\n", path)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (the files' own fsync does not cover their names)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(folder: Path, names: list[str]) -> list[str]:
    """Files another library wrote into ``folder`` (transformers, safetensors, ONNX), made
    like the release's own: each given their mode, 0644 less the umask (safetensors creates
    0600, through a temporary file), and fsync'ed, then the folder; returns ``names``."""
    mode = FILE_MODE & ~_umask()
    for name in names:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(folder)
    return names


FILE_MODE = 0o644  # the mode every release file is created with (torch_zip.py)


def _umask() -> int:
    """This process's umask: read from /proc on Linux (setting it, the only portable way to
    read it, would race with the threads that create files meanwhile)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(text: str, path: Path) -> None:
    """Write a small text file (UTF-8), fsync'ed like the rest of the release."""
    write_bytes(text.encode(), path)


def write_bytes(data: bytes, path: Path) -> None:
    """Write a small file, fsync'ed like the rest of the release."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
