"""Helpers shared by the tests: ground-truth loading, files, running the app, comparing
states.

Imported as ``from tests.support.helpers import ...``; conftest.py holds only fixtures and
hooks. Nothing here runs the code under test (the typed manifest is imported to read it), so
that it can judge that code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from audiocraft_ext.reporting.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]

# what validate=full and validate=load run on a MusicGen release with a compression model file,
# in order (at full, get_pretrained runs audiocraft's two loaders: each model is built once)
FULL_CHECKS = ["lm_file", "compression_file", "get_pretrained", "generate"]
LOAD_CHECKS = ["lm_file", "compression_file", "load_compression_model", "load_lm_model"]
# the environment of a process that must not reach the Hugging Face Hub (read when imported)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ONNX_FRAMES = 20  # the greedy frames the onnx_release fixture is proven over


def torch_load(path: Path):
    """Ground truth for our own fixtures: plain torch.load, independent of the code under test."""
    return torch.load(path, map_location="cpu", weights_only=False)


def release_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a release file, read the way stock audiocraft reads them."""
    return torch.load(path, map_location="cpu", weights_only=True)["best_state"]


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def member_span(path: Path, member: str) -> tuple[int, int]:
    """(offset, size) of a zip member's data in the file, e.g. member="data/3"."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{zf.namelist()[0].split('/')[0]}/{member}")
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))  # the local header's, not the
    return info.header_offset + 30 + name_len + extra_len, info.file_size  # central one's


def app_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "export_app.py"), *args]


def app_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_app(*args: str, cwd: Path, check: bool = False, env: dict | None = None,
            preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run export_app.py as a user would, in a fresh process."""
    proc = subprocess.run(app_command(*args), cwd=cwd, env=env or app_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"export_app failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[ERROR]" in line]


def imported_modules(stderr: str) -> list[str]:
    """The modules a process imported, from its ``-X importtime`` report on stderr."""
    names = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
             if line.startswith("import time:") and "|" in line]
    return [name for name in names if name != "imported package"]  # the report's header


def assert_same_state(actual: Mapping[str, torch.Tensor],
                      expected: Mapping[str, torch.Tensor]) -> None:
    """Assert that two state dicts hold the same keys and, key by key, tensors of the same
    dtype and shape with bit-identical elements (NaN equals the same NaN, -0.0 differs from
    0.0). The message names the first key that differs."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    assert not missing and not unexpected, (
        f"keys differ: missing {missing[:5]} ({len(missing)}), "
        f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for key, want in expected.items():
        got = actual[key]
        assert got.dtype == want.dtype, f"{key}: dtype {got.dtype}, expected {want.dtype}"
        assert got.shape == want.shape, (
            f"{key}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        a, b = _bits(got), _bits(want)
        if not torch.equal(a, b):
            first = int((a != b).nonzero()[0]) // want.element_size()
            raise AssertionError(f"{key}: element {first} (flat) is {_element(got, first)}, "
                                 f"expected {_element(want, first)}")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as raw bytes (one uint8 per byte), so that NaN equals NaN."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _element(tensor: torch.Tensor, index: int) -> str:
    size = tensor.element_size()
    raw = bytes(_bits(tensor)[index * size:(index + 1) * size].tolist()).hex()
    try:
        value = repr(tensor.reshape(-1)[index].item())
    except (RuntimeError, TypeError):  # dtypes without a Python scalar: the bytes say it all
        value = "?"
    return f"{value} (bytes {raw})"


def assert_validated(manifest: Manifest | dict, checks: list[str]) -> None:
    """Assert that the release's validation ran exactly ``checks``, in order, and each passed
    (``checks`` must name at least one: "all passed" of none proves nothing). ``manifest`` is
    an ExportResult's, or export.json as read from a release."""
    assert checks, "name the checks that must have run"
    report = (manifest["validation"] if isinstance(manifest, dict)
              else dataclasses.asdict(manifest.validation))
    ran = [(c["check"], c["ok"]) for c in report["checks"]]
    assert ran == [(name, True) for name in checks], ran


def as_task_config(cfg: DictConfig) -> DictConfig:
    """A config composed with its hydra node, as @hydra.main hands it to the task function:
    HydraConfig set from it, the node removed. The caller unsets HydraConfig when done."""
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
