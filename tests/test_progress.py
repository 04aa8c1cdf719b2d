import logging

from audiocraft_ext import progress


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
    with caplog.at_level(logging.INFO, logger="audiocraft_ext.progress"):
        for _ in range(4):
            advance(total // 4)
        close()
    assert [r.getMessage() for r in caplog.records][-1] == "writing release: 1.0 of 1.0 GiB (100%)"
