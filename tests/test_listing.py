"""mode=list: the overview of a Dora dir, through the app on XPs that audiocraft's own solvers
wrote (real_xps: slow), and in process on the demo XPs (fast): inputs, order, and that
listing reads no tensor bytes."""

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from audiocraft_ext.app.job import run
from audiocraft_ext.app.listing import describe_xp, list_xps, sort_entries
from audiocraft_ext.errors import ExportError
from audiocraft_ext.untrusted.safe_load import load_checkpoint
from tests.support.helpers import error_lines, member_span, run_app, torch_load


def _list(tmp_path: Path, dora_dir: Path | str, *args: str, check: bool = True):
    return run_app("mode=list", "input=xp", f"input.dora_dir={dora_dir}", *args,
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=check)


def _list_json(tmp_path: Path, dora_dir: Path | str, *args: str) -> dict[str, dict]:
    entries = json.loads(_list(tmp_path, dora_dir, "list.json=true", *args).stdout)
    by_sig = {e["sig"]: e for e in entries}
    assert len(by_sig) == len(entries)  # every XP once
    return by_sig


def _table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header's column names and the rows, split on whitespace (no cell holds a space
    unless it is the last column's)."""
    header, *rows = stdout.strip("\n").splitlines()
    return header.split(), [row.split() for row in rows]


def _parameters(checkpoint: Path | str) -> int:
    """Ground truth: what plain torch.load gives for the state state=auto exports."""
    pkg = torch_load(Path(checkpoint))
    key = "fsdp_best_state" if pkg.get("fsdp_best_state") else "best_state"
    return sum(t.numel() for t in pkg[key]["model"].values())


def _valid_ce(checkpoint: Path | str) -> float:
    return torch_load(Path(checkpoint))["history"][-1]["valid"]["ce"]


def _linked_dora(tmp_path: Path, real_xps: dict) -> Path:
    """A Dora dir of its own whose xps/ links the fixtures' XPs (so broken ones can be added)."""
    xps = tmp_path / "dora" / "xps"
    xps.mkdir(parents=True)
    for xp in real_xps["xps"].values():
        (xps / xp["sig"]).symlink_to(xp["folder"])
    return xps.parent


# --- through the app, on real XPs ------------------------------------------------------------
def test_every_real_xp_is_listed_once_with_its_facts(real_xps, tmp_path):
    dora_dir = Path(real_xps["dora_dir"])
    listed = _list_json(tmp_path, dora_dir)
    assert sorted(listed) == sorted(p.name for p in (dora_dir / "xps").iterdir())
    for name, xp in real_xps["xps"].items():
        entry, checkpoint = listed[xp["sig"]], Path(xp["checkpoint"])
        assert entry["solver"] == torch_load(checkpoint)["xp.cfg"].solver, name
        assert entry["solver"] == xp["solver"].split("/")[0]
        assert entry["epochs"] == 2 and entry["problems"] == []
        assert entry["state"] == "best_state"
        assert entry["parameters"] == _parameters(checkpoint), name
        assert entry["checkpoint_bytes"] == checkpoint.stat().st_size
        assert entry["epoch_checkpoints"] == [int(Path(p).stem.split("_")[1])
                                              for p in xp["epoch_checkpoints"]]
        assert entry["releases"] is None  # list.releases not given
        metric = "sisnr" if entry["solver"] == "compression" else "ce"
        assert entry["metric"] == metric
        history = torch_load(checkpoint)["history"]
        assert entry["last"]["valid"][metric] == pytest.approx(history[-1]["valid"][metric])
    musicgen = listed[real_xps["xps"]["musicgen"]["sig"]]
    assert musicgen["epoch_checkpoints"] == [1, 2]
    valid_ce = [e["valid"]["ce"] for e in torch_load(real_xps["xps"]["musicgen"]["checkpoint"]
                                                     )["history"]]
    assert musicgen["best_value"] == pytest.approx(min(valid_ce))
    assert musicgen["best_epoch"] == valid_ce.index(min(valid_ce)) + 1


def test_table_has_a_header_and_one_line_per_xp_on_stdout(real_xps, tmp_path):
    proc = _list(tmp_path, real_xps["dora_dir"])
    header, rows = _table(proc.stdout)
    assert header == ["sig", "solver", "params", "epochs", "metric", "last", "best@epoch",
                      "MiB", "epoch_ckpts"]
    assert [r[0] for r in rows] == sorted(xp["sig"] for xp in real_xps["xps"].values())
    musicgen = real_xps["xps"]["musicgen"]
    [row] = [r for r in rows if r[0] == musicgen["sig"]]
    assert row[1:5] == ["musicgen", f"{_parameters(musicgen['checkpoint']):,}", "2", "ce"]
    assert float(row[5]) == pytest.approx(_valid_ce(musicgen["checkpoint"]), rel=1e-3)
    assert row[8] == "1,2"
    [encodec] = [r for r in rows if r[0] == real_xps["xps"]["encodec"]["sig"]]
    assert encodec[1] == "compression" and encodec[4] == "sisnr" and encodec[6] == "-"
    # logs on stderr, the table alone on stdout
    assert f"listed {len(real_xps['xps'])} XPs" in proc.stderr


def test_sort_by_ce_orders_the_lms_by_their_valid_ce(real_xps, tmp_path):
    _, rows = _table(_list(tmp_path, real_xps["dora_dir"], "list.sort=ce").stdout)
    lms = {xp["sig"]: _valid_ce(xp["checkpoint"]) for xp in real_xps["xps"].values()
           if not xp["solver"].startswith("compression")}
    encodecs = sorted(xp["sig"] for xp in real_xps["xps"].values()
                      if xp["solver"].startswith("compression"))
    assert [r[0] for r in rows] == sorted(lms, key=lms.__getitem__) + encodecs  # no ce: last


def test_a_release_made_by_the_app_shows_as_present(real_xps, tmp_path):
    sig = real_xps["xps"]["musicgen"]["sig"]
    releases = tmp_path / "releases"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}", f"input.sig={sig}",
            "validate=none", f"output.dir={releases / sig}", f"hydra.run.dir={tmp_path / 'x'}",
            cwd=tmp_path, check=True)
    # the rule is the manifest's source.xp_sig, whatever the folder is called
    other = real_xps["xps"]["audiogen"]["sig"]
    (releases / other).mkdir()
    shutil.copy(releases / sig / "export.json", releases / other / "export.json")
    (releases / "notes").mkdir()
    (releases / "notes" / "export.json").write_text("not json")
    listed = _list_json(tmp_path, real_xps["dora_dir"], f"list.releases={releases}")
    assert listed[sig]["releases"] == sorted([sig, other])
    assert all(e["releases"] == [] for s, e in listed.items() if s != sig)
    proc = _list(tmp_path, real_xps["dora_dir"], f"list.releases={releases}")
    header, rows = _table(proc.stdout)
    assert header[-1] == "release"
    assert {r[0]: " ".join(r[9:]) for r in rows}[sig] == ", ".join(sorted([sig, other]))
    assert "export.json is not a readable release manifest" in proc.stderr


def test_broken_xps_get_their_line_and_the_others_still_show(real_xps, tmp_path):
    dora_dir = _linked_dora(tmp_path, real_xps)
    source = Path(real_xps["xps"]["musicgen"]["checkpoint"])
    truncated = dora_dir / "xps" / "deadbeef" / "checkpoint.th"
    truncated.parent.mkdir()
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    (dora_dir / "xps" / "0badc0de").mkdir()  # a run that never saved
    proc = _list(tmp_path, dora_dir)
    assert proc.returncode == 0 and error_lines(proc.stderr) == []
    header, rows = _table(proc.stdout)
    assert header[-1] == "problem" and len(rows) == len(real_xps["xps"]) + 2
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert lines["deadbeef"].endswith(
        f"{truncated} is truncated or damaged: it starts as a torch zip checkpoint but its zip "
        "directory (at the end of the file) is missing")
    assert lines["0badc0de"].endswith(
        f"{dora_dir / 'xps' / '0badc0de'} is a folder without checkpoint.th and no "
        "checkpoint*.th at all")
    listed = _list_json(tmp_path, dora_dir)
    assert listed["deadbeef"]["checkpoint_bytes"] == truncated.stat().st_size
    assert listed["deadbeef"]["parameters"] is None and listed["0badc0de"]["epochs"] is None
    for xp in real_xps["xps"].values():
        assert listed[xp["sig"]]["problems"] == []
        assert listed[xp["sig"]]["parameters"] == _parameters(xp["checkpoint"])
    assert f"{len(real_xps['xps']) + 2} XPs" in proc.stderr and "2 with a problem" in proc.stderr


# --- in process, on the demo XPs -------------------------------------------------------------
@pytest.fixture
def demo_dora(tmp_path, musicgen_ckpt, encodec_ckpt) -> Path:
    """A Dora dir holding a copy of the demo MusicGen XP and its EnCodec XP."""
    for ckpt in (musicgen_ckpt, encodec_ckpt):
        folder = tmp_path / "dora" / "xps" / ckpt.parent.name
        folder.mkdir(parents=True)
        shutil.copy(ckpt, folder / "checkpoint.th")
    return tmp_path / "dora"


def _zero_tensor_records(path: Path) -> int:
    """Overwrite the bytes of every tensor record of a checkpoint with zeros, in place (the
    zip directory, and so each record's CRC-32, is left as it was); return how many bytes."""
    with zipfile.ZipFile(path) as zf:
        members = [name.split("/", 1)[1] for name in zf.namelist() if "/data/" in name]
    spans = [member_span(path, member) for member in members]
    with open(path, "r+b") as f:
        for start, size in spans:
            f.seek(start)
            f.write(bytes(size))
    return sum(size for _, size in spans)


def _bytes_read() -> int:
    """What this process has read through read(2) and pread(2) so far, page cache or not."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_listing_reads_no_tensor_bytes(demo_dora, musicgen_ckpt):
    xp_dir = demo_dora / "xps" / musicgen_ckpt.parent.name
    checkpoint = xp_dir / "checkpoint.th"
    tensor_bytes = _zero_tensor_records(checkpoint)
    # reading any tensor now fails its CRC-32: listing would have said so
    stored = next(iter(load_checkpoint(checkpoint)["best_state"]["model"].values()))
    with pytest.raises(ExportError, match="does not match its CRC-32"):
        stored.load()
    before = _bytes_read()
    entry = describe_xp(xp_dir)
    read = _bytes_read() - before
    assert entry.problems == []
    assert entry.parameters == _parameters(musicgen_ckpt) and entry.state == "best_state"
    with zipfile.ZipFile(checkpoint) as zf:
        pickle_bytes = zf.getinfo(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert read < pickle_bytes.file_size + (256 << 10) < tensor_bytes


def test_sort_keys_and_an_unknown_metric(demo_dora, musicgen_ckpt, encodec_ckpt):
    entries = list_xps(demo_dora)
    lm, encodec = musicgen_ckpt.parent.name, encodec_ckpt.parent.name
    assert [e.sig for e in sort_entries(entries, "ce")] == [lm, encodec]  # no ce: last
    assert [e.sig for e in sort_entries(entries, "params")] == sorted(
        [lm, encodec], key=lambda s: next(e.parameters for e in entries if e.sig == s))
    with pytest.raises(ExportError, match=r"^list.sort=cee: no XP logs a valid metric of that "
                                          r"name; sort by sig, solver, epochs, params, size or "
                                          r"one of: .*\bce\b"):
        sort_entries(entries, "cee")


@pytest.mark.parametrize("overrides, message", [
    (["input=checkpoint", "input.path=x.th"], "mode=list describes the XPs of a Dora dir: use "
     "input=xp input.dora_dir=DIR (or set AUDIOCRAFT_DORA_DIR)"),
    (["input=xp", "input.dora_dir=d", "input.sig=abc"], "mode=list lists every XP of the Dora "
     "dir: drop input.sig, input.path and input.epoch"),
    (["input=xp"], "mode=list needs input.dora_dir=DIR or AUDIOCRAFT_DORA_DIR: the folder "
     "holding xps/"),
    (["input=xp", "input.dora_dir=nowhere"], "nowhere is not a Dora dir: it has no xps/ folder"),
])
def test_list_needs_a_dora_dir(job_config, monkeypatch, overrides, message):
    monkeypatch.delenv("AUDIOCRAFT_DORA_DIR", raising=False)
    with pytest.raises(ExportError) as info:
        run(job_config("mode=list", *overrides))
    assert str(info.value) == message


def test_list_takes_the_dora_dir_from_the_environment(job_config, monkeypatch, demo_dora, capsys):
    monkeypatch.setenv("AUDIOCRAFT_DORA_DIR", str(demo_dora))
    assert run(job_config("mode=list", "input=xp", "list.json=true")) is None
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["sig"] for e in listed) == sorted(p.name for p in (demo_dora / "xps").iterdir())


def test_list_with_another_input_is_one_error_line(refused, tmp_path):
    refused(tmp_path, "mode=list", "input=checkpoint", "input.path=x.th",
            message=re.escape("mode=list describes the XPs of a Dora dir: use input=xp "
                              "input.dora_dir=DIR (or set AUDIOCRAFT_DORA_DIR)") + "$")
