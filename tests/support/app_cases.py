"""One refused command, checked in process or through the app, and the inputs such cases
need: shared by the bad-input, attack and transformers tests.

A rule (what the app refuses, in which words, leaving what behind) is checked in process by
``refused_in_process``: the config composed as @hydra.main composes it, the job run as the
app runs it. ``rejected`` runs the same command through export_app.py in a fresh process
(about two seconds) and checks what only a process shows: exit status 1, one ``[ERROR]``
line, no traceback, nothing on stdout. The ``refused`` fixture (conftest.py) picks one of
the two per test case.
"""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from audiocraft_ext import ExportResult
from audiocraft_ext.app.job import run
from audiocraft_ext.errors import ExportError, command_line_messages
from tests.support.helpers import error_lines, run_app, torch_load


def rejected(tmp_path: Path, *overrides: str, message: str, keep: tuple = (),
             dest: Path | str | None = None, cwd: Path | None = None, **kwargs) -> str:
    """Run the app from ``cwd`` (default: tmp) towards ``dest`` (default: tmp/out/release);
    assert exit 1, one [ERROR] line matching ``message``, no traceback and nothing on stdout,
    and that tmp/out holds nothing but ``keep``. Return the line."""
    out = tmp_path / "out" / "release"
    proc = run_app(*overrides, f"output.dir={dest or out}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=cwd or tmp_path, **kwargs)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    [line] = error_lines(proc.stderr)
    assert re.search(message, line), line
    _assert_only(out.parent, keep)
    return line


def refused_in_process(job_config: Callable[..., DictConfig], tmp_path: Path, *overrides: str,
                       message: str, keep: tuple = (), dest: Path | str | None = None) -> str:
    """``rejected``'s rule, in this process (from its current folder): compose the command's
    config towards ``dest`` (default: tmp/out/release) as @hydra.main composes it
    (``job_config``: conftest's fixture) and run the job as the app runs it; assert that it
    raises ExportError whose message (the one line the app prints after ``[ERROR] - ``)
    matches ``message``, and that tmp/out holds nothing but ``keep``. Return the message."""
    out = tmp_path / "out" / "release"
    cfg = job_config(*overrides, f"output.dir={dest or out}")
    with command_line_messages(), pytest.raises(ExportError) as info:
        run(cfg)
    line = str(info.value)
    assert "\n" not in line and re.search(message, line), line
    _assert_only(out.parent, keep)
    return line


def exported_in_process(job_config: Callable[..., DictConfig], *overrides: str) -> ExportResult:
    """What the app's job returns for the command (``job_config``: conftest's fixture), run in
    this process with messages naming settings as the command line writes them."""
    cfg = job_config(*overrides)
    with command_line_messages():
        result = run(cfg)
    assert result is not None, "not an export (mode=inspect or list)"
    return result


def _assert_only(folder: Path, keep: tuple) -> None:
    if folder.exists():
        assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


def checkpoint_copy(tmp_path: Path, source: Path, edit=None, name: str = "checkpoint.th") -> Path:
    """A copy of ``source`` (edited by ``edit(pkg)``) as <tmp>/dora/xps/<sig>/<name>, with the
    compression model XP next to it so that //sig/ references still resolve."""
    xps = tmp_path / "dora" / "xps"
    xps.mkdir(parents=True, exist_ok=True)
    for xp in source.parent.parent.iterdir():  # link the sibling XPs (the compression model)
        if xp != source.parent and not (xps / xp.name).exists():
            (xps / xp.name).symlink_to(xp)
    path = xps / source.parent.name / name
    path.parent.mkdir(exist_ok=True)
    if edit is None:
        path.write_bytes(source.read_bytes())
    else:
        pkg = torch_load(source)
        edit(pkg)
        torch.save(pkg, path)
    return path


def input_args(path: Path) -> tuple[str, str]:
    return "input=checkpoint", f"input.path={path}"
