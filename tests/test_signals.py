"""SIGTERM (what a cluster scheduler sends) and SIGINT (Ctrl-C) end a run as cleanly as an
error does: one line, a non-zero exit, no staging folder, no lock, nothing published, and an
existing release left as it was. Each case is an app process, signalled mid-export."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.helpers import app_command, app_env, error_lines, sha256_of


def _signalled(tmp_path: Path, ckpt: Path, signum: int, *extra: str
               ) -> tuple[subprocess.CompletedProcess, Path]:
    """Start an export of ``ckpt`` to tmp/out/release, send ``signum`` once its staging
    folder holds the LM file, and return the finished process."""
    dest = tmp_path / "out" / "release"
    cmd = app_command("input=checkpoint", f"input.path={ckpt}", f"output.dir={dest}",
                      "validate.duration=30", f"hydra.run.dir={tmp_path / 'run'}", *extra)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=app_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "out").glob(".release.staging-*/state_dict.bin")):
        assert proc.poll() is None and time.time() < deadline, "the export ended too early"
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), dest


@pytest.mark.slow  # an app process per signal
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_export_removes_staging_and_lock(tmp_path, musicgen_ckpt, signum):
    proc, dest = _signalled(tmp_path, musicgen_ckpt, signum)
    assert proc.returncode == 128 + signum, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = error_lines(proc.stderr)
    assert line.endswith(f"stopped by {signal.Signals(signum).name}: nothing was published "
                         "(the staging folder and the lock are removed; an existing release "
                         "is left as it was)"), line
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no staging, lock or release


def test_a_stop_whose_raise_was_swallowed_still_publishes_nothing(tmp_path):
    """A signal's exception raised inside a weakref callback or __del__ is ignored by Python
    ("Exception ignored in ..."), and the export goes on: the publication refuses anyway."""
    from audiocraft_ext.app.cli import Interrupted
    from audiocraft_ext.writing.publish import clear_stop, request_stop, staged_release

    dest = tmp_path / "release"
    request_stop(Interrupted(signal.SIGTERM))
    try:
        with pytest.raises(Interrupted), staged_release(dest) as staging:
            (staging / "state_dict.bin").write_bytes(b"x")
    finally:
        clear_stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no release, staging or lock
    with staged_release(dest) as staging:  # cleared: the next export publishes
        (staging / "state_dict.bin").write_bytes(b"x")
    assert (dest / "state_dict.bin").is_file()


@pytest.mark.slow  # two app processes
def test_a_signal_during_an_overwrite_keeps_the_previous_release(tmp_path, musicgen_ckpt):
    from audiocraft_ext import export_release

    dest = tmp_path / "out" / "release"
    export_release(musicgen_ckpt, dest, validate="none")
    before = {p.name: sha256_of(p) for p in dest.iterdir()}
    proc, _ = _signalled(tmp_path, musicgen_ckpt, signal.SIGTERM, "output.overwrite=true")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == ["release"]
    assert {p.name: sha256_of(p) for p in dest.iterdir()} == before
