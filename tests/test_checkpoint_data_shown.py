"""What a checkpoint carries reaches the card, the figures, the manifest and the listing as
data: Markdown and HTML made inert, sizes and counts bounded with a visible "(N more)",
numbers that are not finite (or not representable) shown as such, nothing crashing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt

from audiocraft_ext import export_release
from audiocraft_ext.app.listing import format_listing, list_xps
from audiocraft_ext.reporting.card_text import code, fenced
from audiocraft_ext.untrusted.training_history import summarize_history
from tests.support.helpers import torch_load

HOSTILE = "<script>alert(1)</script> [click](javascript:alert(1)) ![i](http://evil/x.png)"
HUGE = "m" * 10_000_000  # a 10 MB metric name
FOLDER = "<img src=x onerror=alert(1)> [t](javascript:x) `tick` | pipe"


def _hostile_history(epochs: int = 3) -> list[dict]:
    history = []
    for epoch in range(epochs):
        valid = {"ce": 3.0 - epoch, HOSTILE: 1.0, "---": 2.0, HUGE: 3.0,
                 "big": 10**400, "-big": -(10**400), "inf": math.inf, "nan": math.nan,
                 "top": 1e308, "bottom": -1e308,
                 **{f"extra{i}": float(i) for i in range(100)}}
        history.append({"train": {"ce": 4.0 - epoch, "ppl": math.inf, "loss": 1e308},
                        "valid": valid})
    return history


def _write_xp(tmp_path: Path, source: Path, folder: str, edit) -> Path:
    """``source``'s checkpoint, edited, as <tmp>/dora/xps/<folder>/checkpoint.th beside the
    XP it refers to (its compression model, //sig/SIG) and no other."""
    xps = tmp_path / "dora" / "xps"
    xps.mkdir(parents=True, exist_ok=True)
    pkg = torch_load(source)
    sig = str(pkg["xp.cfg"].compression_model_checkpoint).removeprefix("//sig/")
    if not (xps / sig).exists():
        (xps / sig).symlink_to(source.parent.parent / sig)
    edit(pkg)
    path = xps / folder / "checkpoint.th"
    path.parent.mkdir()
    torch.save(pkg, path)
    return path


@pytest.fixture
def hostile_ckpt(tmp_path, musicgen_ckpt) -> Path:
    def edit(pkg: dict) -> None:
        pkg["history"] = _hostile_history()
    return _write_xp(tmp_path, musicgen_ckpt, FOLDER, edit)


def _html_and_links(card: str) -> tuple[list[str], list[str]]:
    """The raw HTML and the link/image targets CommonMark (with GFM tables) finds."""
    html, targets = [], []
    tokens = MarkdownIt("commonmark").enable("table").parse(card.split("\n---\n", 1)[1])
    for token in tokens:
        for t in [token, *(token.children or [])]:
            if t.type in ("html_inline", "html_block"):
                html.append(t.content.strip())
            if t.type in ("link_open", "image"):
                targets.append(str(t.attrs.get("href") or t.attrs.get("src")))
    return html, targets


def test_a_hostile_history_and_folder_name_are_inert_and_bounded(hostile_ckpt, tmp_path):
    release = tmp_path / "rel"
    result = export_release(hostile_ckpt, release, validate="none")
    card = (release / "README.md").read_text()
    html, targets = _html_and_links(card)
    assert html == [] and targets == ["training_curves.png"], (html, targets)
    assert "<script>" in card  # shown, as text inside a code span
    assert len(card) < 50_000 and (release / "export.json").stat().st_size < 100_000
    front = card.split("\n---\n", 1)[0]
    assert front.count("\n") < 20  # the "---" metric did not end or extend the front matter
    # 110 valid metrics: 64 kept (46 omitted), with train's 2 others 66 names; 12 listed
    assert "Last epoch (100 more):" in card
    assert "| `big` |  | inf |" in card and "| `-big` |  | -inf |" in card
    assert "| `nan` |  | nan |" in card
    manifest = json.loads((release / "export.json").read_text())  # strict JSON: no NaN token
    assert manifest["training"]["last"]["valid"]["inf"] == "inf"
    assert manifest["training"]["last"]["valid"]["nan"] == "nan"
    assert result.manifest.training is not None and result.manifest.training.omitted == 46
    assert all(len(name) <= 64 for name in manifest["training"]["last"]["valid"])
    assert (release / "training_curves.png").stat().st_size > 1000  # drawn, off-scale skipped


def test_curves_that_cannot_be_drawn_leave_the_release_without_them(tmp_path, musicgen_ckpt):
    def edit(pkg: dict) -> None:
        pkg["history"] = [{"train": {"ce": v}, "valid": {"ce": v}}
                          for v in (math.inf, -math.inf, math.nan, 1e308, -1e308)]
    ckpt = _write_xp(tmp_path, musicgen_ckpt, "allbad", edit)
    result = export_release(ckpt, tmp_path / "rel", validate="none")
    assert result.manifest.training is not None and result.manifest.training.epochs == 5
    card = (tmp_path / "rel" / "README.md").read_text()
    assert "5 epoch(s) trained. Best valid `ce` -inf at epoch 2" in card


def test_numbers_a_float_cannot_hold_are_infinities_of_their_sign():
    summary = summarize_history([{"valid": {"ce": 10**400, "x": -(10**400), "y": 2}}],
                                "musicgen")
    assert summary.last["valid"] == {"ce": math.inf, "x": -math.inf, "y": 2.0}
    assert summary.best_value == math.inf and summary.best_epoch == 1


def test_an_unhashable_solver_is_no_family():
    assert summarize_history([{"valid": {"ce": 1.0}}], ["musicgen"]).best_metric is None


def test_code_spans_and_fences_hold_any_backticks():
    for value in ["`", "a``b", "```", "x`", " "]:
        [token] = MarkdownIt("commonmark").parseInline(code(value))
        [span] = token.children or []
        assert span.type == "code_inline" and span.content.strip() == value.strip()
    block = "\n".join(fenced(["```", "rm -rf ~"], "bash"))
    [token] = MarkdownIt("commonmark").parse(block)
    assert token.type == "fence" and token.content == "```\nrm -rf ~\n"


def test_listing_reports_a_broken_xp_on_its_own_line_and_lists_the_rest(tmp_path,
                                                                      musicgen_ckpt):
    def hostile(pkg: dict) -> None:
        pkg["history"] = _hostile_history(1)

    def broken(pkg: dict) -> None:
        pkg["best_state"] = {"model": {"w": "not a tensor"}}

    _write_xp(tmp_path, musicgen_ckpt, "hostile", hostile)
    _write_xp(tmp_path, musicgen_ckpt, "broken", broken)
    entries = list_xps(tmp_path / "dora")
    by_sig = {e.sig: e for e in entries}
    assert by_sig["hostile"].problems == [] and by_sig["hostile"].epochs == 1
    [problem] = by_sig["broken"].problems
    assert problem.startswith("cannot be described: ") or "best_state" in problem, problem
    assert len(entries) == 3 and all(not e.problems for s, e in by_sig.items() if s != "broken")
    table = format_listing(entries).splitlines()
    assert len(table) == 1 + len(entries)
    assert [line.split()[0] for line in table if line.endswith(problem)] == ["broken"]
    assert json.loads(format_listing(entries, as_json=True))  # strict JSON
