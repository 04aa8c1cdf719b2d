import logging
import subprocess
import sys

import pytest

from audiocraft_ext.reporting import progress
from tests.support.helpers import app_env


def test_small_writes_are_silent(caplog):
    advance, close = progress.byte_progress(1 << 20, "writing release")
    with caplog.at_level(logging.INFO):
        advance(1 << 20)
        close()
    assert caplog.records == []


def test_long_writes_log_progress_when_not_on_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    total = progress.QUIET_BELOW_BYTES * 4
    advance, close = progress.byte_progress(total, "writing release")
    with caplog.at_level(logging.INFO, logger="audiocraft_ext.reporting.progress"):
        for _ in range(4):
            advance(total // 4)
        close()
    assert [r.getMessage() for r in caplog.records][-1] == "writing release: 1.0 of 1.0 GiB (100%)"


@pytest.mark.slow  # a fresh process: logging set up from scratch
def test_log_to_stderr_shows_the_library_phases(musicgen_ckpt, tmp_path):
    """The documented one-liner: a library caller sees the same phase lines as the app."""
    code = ("import audiocraft_ext, sys; audiocraft_ext.log_to_stderr(); "
            "audiocraft_ext.log_to_stderr(); "
            "audiocraft_ext.export_release(sys.argv[1], sys.argv[2], validate='load')")
    proc = subprocess.run([sys.executable, "-c", code, str(musicgen_ckpt), str(tmp_path / "r")],
                          capture_output=True, text=True, env=app_env(), check=True)
    lines = proc.stderr.splitlines()
    for phase in ("reading ", "exporting best_state", "building the LM with load_lm_model",
                  "comparing ", "release written to"):
        assert sum(phase in line for line in lines) >= 1, (phase, proc.stderr)
    # called twice, one handler: each record once
    assert sum("release written to" in line for line in lines) == 1
    assert proc.stdout == ""
