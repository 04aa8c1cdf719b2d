"""The wheel installs into an existing AudioCraft environment and runs from any folder.

The environment is built as users have it (this stack's torch, audiocraft and what it imports,
no audiocraft-ext), from pip's cache and the stack's lock, by the project's own set-up script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STACK = os.environ.get("STACK") or ("pinned" if torch.__version__.startswith("2.1.") else "modern")

pytestmark = pytest.mark.slow


def _freeze(env: Path) -> dict[str, str]:
    out = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "list", "--format=freeze",
                          "--disable-pip-version-check"], capture_output=True, text=True,
                         check=True).stdout
    return {name.lower().replace("_", "-"): version for name, version
            in (line.split("==", 1) for line in out.splitlines() if "==" in line)}


def _clean_env(env: Path) -> dict[str, str]:
    """The user's shell: the environment's bin first, nothing of the checkout on the path."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HYDRA_FULL_ERROR")}
    return {**clean, "PATH": f"{env / 'bin'}:{clean.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def _project_copy(dest: Path) -> Path:
    """The project's files as a clone has them (tracked, plus new files not ignored), without
    the build/ or caches a working copy may hold: a wheel built in place would pack those."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if not os.path.lexists(src):  # deleted in the working copy
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("install")
    env = work / "env"
    setup = subprocess.run(["bash", str(ROOT / "scripts" / "setup_venv.sh")],
                           env={**os.environ, "STACK": STACK, "VENV": str(env), "PROJECT": "no"},
                           capture_output=True, text=True, timeout=1800)
    assert setup.returncode == 0, setup.stderr[-3000:]
    before = _freeze(env)
    assert "audiocraft" in before and "audiocraft-ext" not in before
    dist = work / "dist"
    source = _project_copy(work / "source")
    build = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "wheel", "--no-deps",
                            "--quiet", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("audiocraft_ext-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("audiocraft_ext/")}
    package = {os.path.relpath(os.path.join(folder, name), source)
               for folder, _, names in os.walk(source / "audiocraft_ext", followlinks=True)
               for name in names if name.endswith((".py", ".yaml"))}
    assert shipped == package  # the configs through the link, and nothing else
    install = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              f"{wheel}[launchers]"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    cwd = work / "elsewhere"
    cwd.mkdir()
    yield {"env": env, "before": before, "after": _freeze(env), "cwd": cwd}
    shutil.rmtree(env)  # gigabytes (a CUDA build of torch): not left for pytest's retention


def run(installed: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd or installed["cwd"], env=_clean_env(installed["env"]),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def test_installing_keeps_every_package_the_environment_had(installed):
    before, after = installed["before"], installed["after"]
    changed = {name: (version, after.get(name)) for name, version in before.items()
               if after.get(name) != version}
    assert changed == {}  # torch, audiocraft, numpy...: nothing reinstalled, up- or downgraded
    added = set(after) - set(before)
    assert "audiocraft-ext" in added
    assert not added & {"torch", "torchaudio", "audiocraft", "xformers", "numpy"}


def test_the_installed_package_is_used_and_carries_its_configs(installed):
    where = run(installed, "python", "-c", "import audiocraft_ext.app.cli as c; print(c.__file__); "
                "print(c.CONF_DIR)").stdout.split()
    site = str(installed["env"] / "lib")
    assert all(p.startswith(site) for p in where), where  # not the checkout's files
    assert (Path(where[1]) / "export.yaml").is_file() and not Path(where[1]).is_symlink()


def test_help_and_cfg_from_any_folder(installed):
    help_text = run(installed, "audiocraft-export", "--help").stdout
    assert "input: checkpoint, demo, weights, xp" in help_text
    assert "validate: full, load, none" in help_text
    job = run(installed, "python", "-m", "audiocraft_ext", "input=checkpoint",
              "input.path=x.th", "--cfg", "job").stdout
    assert "path: x.th" in job and "level: full" in job
    launcher = run(installed, "audiocraft-export", "hydra/launcher=slurm_export", "--cfg",
                   "hydra", "-p", "hydra.launcher").stdout
    assert "SlurmLauncher" in launcher and "mem_gb: 32" in launcher


def test_demo_export_inspect_and_sweep_from_any_folder(installed):
    cwd = installed["cwd"]
    demo = run(installed, "audiocraft-export", "hydra.run.dir=demo")
    release = Path(demo.stdout.strip().splitlines()[-1])
    assert release.is_relative_to(cwd / "demo") and (release / "state_dict.bin").is_file()
    assert "validate=full: lm_file ok" in (cwd / "demo" / "export_app.log").read_text()
    checkpoint = cwd / "demo" / "demo_dora" / "xps" / release.name / "checkpoint.th"  # the LM

    exported = run(installed, "python", "-m", "audiocraft_ext", "input=checkpoint",
                   f"input.path={checkpoint}", "validate=load", "output.dir=again")
    assert (cwd / "again" / "compression_state_dict.bin").is_file()
    assert exported.stdout.strip().splitlines()[-1] == str(cwd / "again")
    # the release's export_config.yaml finds the app's hydra settings in the installed package;
    # run from the Dora dir its paths are recorded relative to
    rerun = run(installed, "audiocraft-export", "--config-dir", str(cwd / "again"),
                "--config-name", "export_config", f"output.dir={cwd / 'rerun'}",
                f"hydra.run.dir={cwd / 'rerun_run'}", cwd=checkpoint.parents[2])
    assert rerun.stdout == f"{cwd / 'rerun'}\n" and "release " in rerun.stderr
    assert (cwd / "rerun_run" / "export_app.log").is_file()

    inspect = run(installed, "audiocraft-export", "mode=inspect", "input=checkpoint",
                  f"input.path={checkpoint}").stdout
    assert "state=auto   exports best_state" in inspect

    sweep = run(installed, "audiocraft-export", "-m", "hydra/launcher=joblib",
                "hydra.sweep.dir=sweep", "input=checkpoint", f"input.path={checkpoint}",
                "validate=none,load")
    summary = json.loads((cwd / "sweep" / "sweep_summary.json").read_text())
    assert (summary["succeeded"], summary["failed"]) == (2, 0), sweep.stdout
