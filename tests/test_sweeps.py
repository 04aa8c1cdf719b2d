"""Multirun sweeps over checkpoints on each launcher, the sweep summary, and re-runs.

Every test runs several exports through the app (and a launcher): all are slow."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.helpers import (
    ROOT,
    app_env,
    assert_same_state,
    release_state,
    run_app,
    sha256_of,
)

pytestmark = pytest.mark.slow


def _xps(dora_dir: Path, sources: list[Path]) -> list[str]:
    """A Dora dir of its own holding the XPs of ``sources`` (and their compression model XP)."""
    shutil.copytree(sources[0].parent.parent, dora_dir / "xps")
    return [p.parent.name for p in sources]


def _summary(sweep: Path) -> dict:
    return json.loads((sweep / "sweep_summary.json").read_text())


def _assert_jobs_ok(summary: dict, n: int) -> None:
    assert summary["succeeded"] == n and summary["failed"] == 0
    for job in summary["jobs"]:
        release = Path(job["release"])
        assert job["validation"] == "load: ok"
        assert job["sha256"] == sha256_of(release / "state_dict.bin")
        assert job["bytes"] == (release / "state_dict.bin").stat().st_size
    assert len({j["release"] for j in summary["jobs"]}) == n  # never colliding


@pytest.fixture(scope="module")
def three_xps(musicgen_ckpt, fsdp_ckpt, plain_cfg_ckpt, tmp_path_factory):
    dora = tmp_path_factory.mktemp("sweep-dora")
    return dora, _xps(dora, [musicgen_ckpt, fsdp_ckpt, plain_cfg_ckpt])


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_three_xp_sweep(three_xps, tmp_path, launcher):
    dora, sigs = three_xps
    args = ["-m", "input=xp", f"input.dora_dir={dora}", f"input.sig={','.join(sigs)}",
            "validate=load", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    if launcher != "basic":
        args.append(f"hydra/launcher={launcher}")
    if launcher == "submitit_local":
        args += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    proc = run_app(*args, cwd=tmp_path, check=True)
    summary = _summary(tmp_path / "sweep")
    _assert_jobs_ok(summary, 3)
    assert sorted(Path(j["release"]).name for j in summary["jobs"]) == sorted(sigs)
    table = (tmp_path / "sweep" / "sweep_summary.txt").read_text()
    assert table.startswith("job  status  source") and table.count("load: ok") == 3
    assert table in proc.stdout


def test_a_failing_job_does_not_stop_the_others(three_xps, tmp_path):
    dora, sigs = three_xps
    proc = run_app("-m", "input=xp", f"input.dora_dir={dora}",
                   f"input.sig={sigs[0]},0badc0de,{sigs[1]}", "validate=load",
                   "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "1 of 3 export jobs failed" in proc.stderr
    summary = _summary(tmp_path / "sweep")
    assert (summary["succeeded"], summary["failed"]) == (2, 1)
    [failed] = [j for j in summary["jobs"] if j["status"] == "failed"]
    missing = f"no XP '0badc0de' in {dora / 'xps'} ({len(list((dora / 'xps').iterdir()))} XPs; "
    assert failed["job"] == 1 and failed["error"].startswith(missing)
    table = (tmp_path / "sweep" / "sweep_summary.txt").read_text()
    assert f"job 1 error: {missing}" in table
    [row] = [line for line in table.splitlines() if line.startswith("1 ")]
    assert row.split()[:3] == ["1", "failed", "input.sig=0badc0de"]  # not a cut-off path


def test_two_jobs_writing_one_release_fail_clearly(musicgen_ckpt, fsdp_ckpt, tmp_path):
    out = tmp_path / "release"
    proc = run_app("-m", "input=checkpoint", f"input.path={musicgen_ckpt},{fsdp_ckpt}",
                   f"output.dir={out}", "validate=load", "hydra/launcher=joblib",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1
    summary = _summary(tmp_path / "sweep")
    assert (summary["succeeded"], summary["failed"]) == (1, 1)
    [failed] = [j for j in summary["jobs"] if j["status"] == "failed"]
    assert failed["error"] in (f"another export is writing {out} right now",
                               f"{out} already exists; choose another output.dir or set "
                               "output.overwrite=true to replace it once the new export validated")
    [ok] = [j for j in summary["jobs"] if j["status"] == "ok"]
    assert json.loads((out / "export.json").read_text())["source"]["path"] == ok["source"]


def _run_dirs(root: Path) -> list[Path]:
    """Hydra's <root>/<date>/<time> folders (the app's run.dir and sweep.dir layout)."""
    return sorted(root.glob("????-??-??/??-??-??"))


def _assert_logged_like_the_app(proc: subprocess.CompletedProcess) -> None:
    """Logs on stderr (stdout is for the release path), without xformers' import notice."""
    assert "[audiocraft_ext.app.job][INFO] - release " in proc.stderr
    assert "[INFO]" not in proc.stdout
    assert "xformers" not in proc.stderr.lower()


def test_rerun_from_the_saved_config_behaves_as_the_original(musicgen_ckpt, tmp_path):
    """The documented re-run (README, "Sweeps and clusters") gets the app's Hydra settings:
    the same release bytes, stdout, logging, run and sweep dirs, sweep summary and help. It
    runs from the Dora dir, which the release records its paths relative to."""
    dora = tmp_path / "dora"
    [sig] = _xps(dora, [musicgen_ckpt])
    first = tmp_path / "first"
    run_app("input=xp", f"input.dora_dir={dora}", f"input.sig={sig}", "state=best",
            "validate=load", f"output.dir={first}", f"hydra.run.dir={tmp_path / 'run1'}",
            cwd=tmp_path, check=True)
    rerun = ("--config-dir", str(first), "--config-name", "export_config")
    again = tmp_path / "again"
    proc = run_app(*rerun, f"output.dir={again}", cwd=dora, check=True)
    assert proc.stdout == f"{again}\n"
    _assert_logged_like_the_app(proc)
    [run_dir] = _run_dirs(dora / "outputs")  # hydra.run.dir: outputs/<date>/<time>
    assert "release " in (run_dir / "export_app.log").read_text()  # hydra.job.name
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        assert sha256_of(again / name) == sha256_of(first / name)
    assert_same_state(release_state(again / "state_dict.bin"),
                      release_state(first / "state_dict.bin"))
    m1, m2 = (json.loads((d / "export.json").read_text()) for d in (first, again))
    assert m1["config"] == {**m2["config"], "output": {**m2["config"]["output"], "dir": "first"}}

    swept = run_app("-m", *rerun, "output.dir=null", "validate.level=none,load", cwd=dora,
                    check=True)
    [sweep_dir] = _run_dirs(dora / "multirun")  # hydra.sweep.dir, then subdir = job number
    summary = _summary(sweep_dir)
    assert [(j["job"], j["validation"]) for j in summary["jobs"]] == [(0, "none"), (1, "load: ok")]
    for job in summary["jobs"]:
        assert job["release"] == str(sweep_dir / str(job["job"]) / musicgen_ckpt.parent.name)
        assert job["sha256"] == sha256_of(first / "state_dict.bin")
    assert (sweep_dir / "sweep_summary.txt").read_text() in swept.stdout
    assert "[INFO]" not in swept.stdout and "xformers" not in swept.stderr.lower()

    helped = run_app(*rerun, "--help", cwd=tmp_path, check=True).stdout
    original = run_app("--help", cwd=tmp_path, check=True).stdout
    assert helped.startswith("audiocraft-export: export an AudioCraft training checkpoint")
    assert helped.split("== Config ==")[0] == original.split("== Config ==")[0]


SLURM_SCRIPT = ROOT / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="module")
def slurm_cluster():
    """A real single-node SLURM cluster on localhost, stopped after the module."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and apt-get (Debian packages)")
    # munged wants every folder above its socket traversable by all; pytest's are private
    state = Path(tempfile.mkdtemp(prefix="acx-slurm-"))
    state.chmod(0o755)
    proc = subprocess.run(["bash", str(SLURM_SCRIPT), "start", str(state)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    conf = proc.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    yield conf
    subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(state)], check=True, timeout=300)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slurm
def test_three_xp_sweep_on_a_real_slurm_cluster(slurm_cluster, three_xps, tmp_path):
    dora, sigs = three_xps
    proc = run_app("-m", "input=xp", f"input.dora_dir={dora}", f"input.sig={','.join(sigs)}",
                   "validate=load", "hydra/launcher=slurm_export", "hydra.launcher.timeout_min=10",
                   "hydra.launcher.signal_delay_s=60", "hydra.launcher.cpus_per_task=1",
                   "hydra.launcher.mem_gb=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path, env=app_env(SLURM_CONF=slurm_cluster), check=True)
    summary = _summary(tmp_path / "sweep")
    _assert_jobs_ok(summary, 3)
    # one task of a SLURM job array per export, each with its submitit log
    tasks = sorted(p.name.split("_")[1] for p in (tmp_path / "sweep" / ".submitit").glob("*_*")
                   if p.is_dir())
    assert tasks == ["0", "1", "2"]
    assert (tmp_path / "sweep" / "sweep_summary.txt").read_text() in proc.stdout
