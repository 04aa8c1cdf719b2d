"""Running the app on one bad input, and the inputs themselves: shared by the bad-input and
attack tests."""

import re
from pathlib import Path

import torch

from helpers import error_lines, run_app, torch_load


def rejected(tmp_path: Path, *overrides: str, message: str, keep: tuple = (), **kwargs) -> None:
    """Run the app towards tmp/out/release; assert exit 1, one [ERROR] line matching
    ``message`` and no traceback, and that tmp/out holds nothing but ``keep``."""
    dest = tmp_path / "out" / "release"
    proc = run_app(*overrides, f"output.dir={dest}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, **kwargs)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = error_lines(proc.stderr)
    assert re.search(message, line), line
    if dest.parent.exists():
        assert sorted(p.name for p in dest.parent.iterdir()) == sorted(keep)


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
