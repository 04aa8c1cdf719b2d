"""The ONNX toolchain: Optimum's exporter and ONNX Runtime, installed beside the user's environment.

Optimum's MusicGen exporter (``optimum-onnx`` 0.1.0, the newest) requires transformers < 4.58,
while the environments people export from run transformers 5.x too. So the toolchain lives in a
folder of its own, made once by ``python -m audiocraft_ext.onnx_format.toolchain`` (``pip
install --no-deps --target``, from the package index): transformers and its tokenizers and Hub
client at releases that import with this environment's torch, Optimum, ONNX and ONNX Runtime.
The export and its proof run in a child process that imports the toolchain first
(``PYTHONPATH``); this environment's torch, numpy and protobuf serve both. An export never
installs anything: without the toolchain, ``output.onnx=true`` is refused with the command.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ExportError

# Two toolchains, by this environment's torch. From torch 2.4: optimum-onnx 0.1.0 (the
# newest; it calls torch.rms_norm, new in 2.4) over transformers 4.57 (it requires < 4.58).
# Before: optimum 1.23, whose exporter was still its own, over transformers 4.46 (it requires
# < 4.47). ml_dtypes 0.5.4 imports with numpy 1.26 and 2.x alike (0.7 needs numpy 2); protobuf
# is onnx's (6.31 or newer). Each verified with its stack (torch 2.14.1, numpy 2.4; torch 2.1.0,
# numpy 1.26); the environment's torch and numpy serve the toolchain too.
COMMON = ("huggingface_hub==0.36.2", "onnx==1.23.2", "onnxruntime==1.32.0", "ml_dtypes==0.5.4",
          "protobuf==7.36.2", "flatbuffers==25.12.19")
MODERN = ("transformers==4.57.6", "tokenizers==0.22.1", "optimum==2.1.0", "optimum-onnx==0.1.0")
BEFORE_TORCH_2_4 = ("transformers==4.46.3", "tokenizers==0.20.3", "optimum==1.23.3")
# what the child imports: the toolchain is whole only when a process of this environment can
IMPORT_CHECK = ("import onnx, onnxruntime, transformers; "
                "from optimum.exporters.onnx import main_export; "
                "from optimum.onnx import merge_decoders")


def cache_root() -> Path:
    return Path(os.environ.get("AUDIOCRAFT_EXT_CACHE",
                               Path.home() / ".cache" / "audiocraft-ext")).expanduser()


def requirements() -> tuple[str, ...]:
    """The toolchain's pins for this environment's torch."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (MODERN if (major, minor) >= (2, 4) else BEFORE_TORCH_2_4) + COMMON


def folder() -> Path:
    """Where the toolchain for this environment is (or would be) installed."""
    pins = requirements()
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    return cache_root() / f"onnx-toolchain-{key}"


def cached_folder(home: Path, fill: Callable[[Path], None]) -> Path:
    """``home``, filled by ``fill(folder)`` unless it was: one filler at a time (pytest-xdist
    workers, both stacks' suites), and readers never see a half-filled folder."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / ".installed").is_file():
            return home
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
        try:
            fill(tmp)
            (tmp / ".installed").touch()
            if home.exists():
                shutil.rmtree(home)
            tmp.rename(home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home


def pip_target(home: Path, pins: tuple[str, ...], log: Callable[[str], None] | None = None,
               check: str | None = None) -> Path:
    """``pins`` installed into ``home`` (``pip install --no-deps --target``), unless there;
    ``check``, Python code, must then run with the folder first on the path."""

    def fill(folder: Path) -> None:
        if log is not None:
            log(f"installing {' '.join(pins)} into {home}")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--target", str(folder), *pins], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip could not install {' '.join(pins)}: "
                               f"{_last_line(proc.stderr)}")
        if check is not None:
            proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                  env=_env_with(folder), cwd=folder)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(pins)} do not import with this environment: "
                                   f"{_last_line(proc.stderr)}")

    return cached_folder(home, fill)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(nothing said)"


def _env_with(first: Path) -> dict[str, str]:
    """This environment with ``first`` and then this package's own folder ahead of anything
    else on the path (the child must import both, whatever its working directory)."""
    package_root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(first), str(package_root), *filter(None, [os.environ.get("PYTHONPATH")])])}


INSTALL_COMMAND = "python -m audiocraft_ext.onnx_format.toolchain"


def refusal() -> str | None:
    """Why ``output.onnx=true`` cannot run here (one line), or None."""
    if (folder() / ".installed").is_file():
        return None
    return (f"ONNX export runs with Optimum's exporter, installed beside this environment "
            f"(it needs transformers < 4.58): run `{INSTALL_COMMAND}` once (pip, from the "
            f"package index, into {folder()})")


def run_child(command: str, *args: str) -> dict[str, Any]:
    """``python -m audiocraft_ext.onnx_format.child command args`` with the toolchain first on
    the path, run from the toolchain's folder (so that nothing in the user's working directory
    shadows it; ``args`` are absolute paths); its last stdout line, a JSON object. Its failure
    is one line."""
    proc = subprocess.run([sys.executable, "-m", "audiocraft_ext.onnx_format.child", command,
                           *args], capture_output=True, text=True, errors="replace",
                          env=_env_with(folder()), cwd=folder())
    if proc.returncode < 0:
        raise ExportError(f"the ONNX {command} was killed by signal "
                          f"{signal.Signals(-proc.returncode).name} (out of memory?)")
    lines = proc.stdout.strip().splitlines()
    try:
        if proc.returncode == 0 and lines:
            return dict(json.loads(lines[-1]))
    except ValueError:
        pass
    raise ExportError(f"the ONNX {command} failed: {_last_line(proc.stderr)}")


def main() -> int:
    try:
        home = pip_target(folder(), requirements(), check=IMPORT_CHECK, log=lambda m: print(
            f"{m}\n(about 260 MB once installed)", file=sys.stderr))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
