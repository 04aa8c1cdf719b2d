"""Messages that name what to do next (issue 21): a Dora dir given as its xps/ folder, a
release given as input, another trainer's state dict, a re-run from a release's config that
must be given a recorded ``???`` again or a Dora dir; the sweep table's failed rows, the
audiocraft import's log lines and the transformers files' mode.

The rules run in process (the ``refused`` fixture; a re-run's config composed as
``--config-dir <release> --config-name export_config`` composes it)."""

import logging
import os
import re
import stat
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from audiocraft_ext.app.job import run
from audiocraft_ext.app.sweep_summary import format_table
from audiocraft_ext.errors import ExportError, command_line_messages
from audiocraft_ext.validation import background_import
from tests.support.app_cases import exported_in_process
from tests.support.app_cases import input_args as _input
from tests.support.helpers import ROOT, as_task_config


# --- a Dora dir given as its xps/ folder, or not found by a re-run ---------------------------
def test_dora_dir_given_as_its_xps_folder_names_its_parent(tmp_path, refused):
    (tmp_path / "dora" / "xps" / "a1b2c3d4").mkdir(parents=True)
    xps = tmp_path / "dora" / "xps"
    refused(tmp_path, "input=xp", f"input.dora_dir={xps}", "input.sig=a1b2c3d4",
            message=re.escape(f"no XP 'a1b2c3d4' in {xps / 'xps'} (no such folder): {xps} is "
                              f"the xps/ folder of the Dora dir {xps.parent}, not the Dora "
                              f"dir; give its parent, input=xp input.dora_dir={xps.parent}")
            + "$")


def test_dora_dir_of_the_current_folder_names_the_variable(tmp_path, refused, monkeypatch):
    """What a re-run started outside the Dora dir without AUDIOCRAFT_DORA_DIR meets: its
    config's dora_dir is ${oc.env:AUDIOCRAFT_DORA_DIR,.}."""
    monkeypatch.delenv("AUDIOCRAFT_DORA_DIR", raising=False)
    refused(tmp_path, "input=xp", "input.dora_dir=.", "input.sig=b7e74332", cwd=tmp_path,
            message=re.escape(f"no XP 'b7e74332' in xps (no such folder): input=xp "
                              f"input.dora_dir is '.', the current folder ({tmp_path}), as "
                              "AUDIOCRAFT_DORA_DIR is not set; set AUDIOCRAFT_DORA_DIR or "
                              "input=xp input.dora_dir to the Dora dir, the folder holding xps/")
            + "$")


def test_missing_dora_dir_names_both_ways_to_give_it(tmp_path, refused):
    refused(tmp_path, "input=xp", f"input.dora_dir={tmp_path / 'nodora'}", "input.sig=b7e74332",
            message=re.escape(f"(no such folder): input=xp input.dora_dir is "
                              f"'{tmp_path / 'nodora'}'; set AUDIOCRAFT_DORA_DIR or input=xp "
                              "input.dora_dir to the Dora dir, the folder holding xps/") + "$")


# --- a release, or another trainer's file, given as input ------------------------------------
def _release_file(path: Path, solver: str) -> Path:
    """A file as audiocraft's export_lm / export_encodec write it (release_format.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"best_state": {"w": torch.zeros(2)}, "xp.cfg": f"solver: {solver}\nfoo: 1\n",
                "version": "1.3.0", "exported": True}, path)
    return path


@pytest.mark.parametrize("name, solver, model_class", [
    ("state_dict.bin", "musicgen", "MusicGen"),
    ("state_dict.bin", "audiogen", "AudioGen"),
    ("compression_state_dict.bin", "compression", "CompressionModel"),
])
def test_release_file_needs_no_export(tmp_path, refused, name, solver, model_class):
    path = _release_file(tmp_path / "release" / name, solver)
    refused(tmp_path, *_input(path),
            message=re.escape(f"{path} is a release file (exported, its xp.cfg is YAML text), "
                              "not a training checkpoint: it needs no export; load its folder "
                              f"with {model_class}.get_pretrained('{path.parent}')") + "$")


def test_release_folder_needs_no_export(tmp_path, refused):
    folder = tmp_path / "release"
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        _release_file(folder / name, "musicgen")
    refused(tmp_path, *_input(folder),
            message=re.escape(f"{folder} is a release folder (exported: state_dict.bin, "
                              "compression_state_dict.bin, no checkpoint.th): it needs no "
                              f"export; load it with MusicGen.get_pretrained('{folder}') "
                              "(AudioGen and MAGNeT alike)") + "$")


SUPPORTED = ("audiocraft-ext exports AudioCraft solver checkpoints (a Dora XP's checkpoint.th, "
             "with their xp.cfg) of MusicGen, AudioGen, MAGNeT and EnCodec (compression) "
             "solvers")


def weights_instead(path) -> str:
    return (f"weights without their config are released with input=weights input.path={path} "
            "input.base=BASE, where BASE (an AudioCraft release folder, training checkpoint or "
            "Hub name) gives the architecture and the compression model")


@pytest.mark.parametrize("content, what", [
    ({"w": torch.zeros(2), "b": torch.ones(3)}, "a plain {name: tensor} state dict"),
    ({"state_dict": {"w": torch.zeros(2)}, "epoch": 3},
     "a {'state_dict': ...} file, as another trainer writes it"),
    ({"epoch": 3}, "no xp.cfg key"),
], ids=["plain", "state_dict", "other"])
def test_another_trainers_file_says_what_is_supported(tmp_path, refused, content, what):
    path = tmp_path / "model.ckpt"
    torch.save(content, path)
    then = SUPPORTED if what == "no xp.cfg key" else weights_instead(path)
    refused(tmp_path, *_input(path),
            message=re.escape(f"{path} has no xp.cfg config ({what}): {then}") + "$")


def test_unknown_signature_without_a_similar_one(tmp_path, refused):
    xps = tmp_path / "dora" / "xps"
    for sig in ("0a1b2c3d", "11223344", "99887766", "fe734bf7"):
        (xps / sig).mkdir(parents=True)
    refused(tmp_path, "input=xp", f"input.dora_dir={xps.parent}", "input.sig=zzzzzzzz",
            message=re.escape("(4 XPs; none similar: 0a1b2c3d, 11223344, 99887766, ...; "
                              "mode=list shows them all)") + "$")


# --- re-runs from a release's export_config.yaml ---------------------------------------------
@pytest.fixture
def rerun_config() -> Iterator[Callable[..., DictConfig]]:
    """``rerun_config(release, *overrides)``: the config of ``audiocraft-export --config-dir
    <release> --config-name export_config OVERRIDES``, with HydraConfig set as the app sets it."""
    def make(release: Path, *overrides: str) -> DictConfig:
        with initialize_config_dir(str(release), version_base="1.3"):
            cfg = compose(config_name="export_config", return_hydra_config=True, overrides=[
                *overrides, f"hydra.searchpath=[file://{ROOT / 'conf'}]"])
        return as_task_config(cfg)

    yield make
    HydraConfig.instance().cfg = None


def _rerun_refused(cfg: DictConfig) -> str:
    with command_line_messages(), pytest.raises(ExportError) as info:
        run(cfg)
    return str(info.value)


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_rerun_asks_again_for_a_path_recorded_as_missing(job_config, rerun_config, tmp_path,
                                                         musicgen_ckpt, monkeypatch, given):
    """output.dir outside the Dora dir is recorded ??? (a relative one too: made absolute
    first); the re-run stops instead of writing to the run dir, and runs once it is given."""
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    exported_in_process(job_config, *_input(musicgen_ckpt), "validate=none",
                        f"output.dir={first if given == 'absolute' else 'first'}")
    recorded = OmegaConf.load(first / "export_config.yaml")
    assert OmegaConf.is_missing(recorded.output, "dir")
    cfg = rerun_config(first, "validate=none")
    assert _rerun_refused(cfg) == ("output.dir is recorded as ??? in export_config.yaml (it "
                                   "named a private path): give it again, e.g. output.dir=...")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]  # nothing written
    monkeypatch.setenv("AUDIOCRAFT_DORA_DIR", str(musicgen_ckpt.parent.parent.parent))
    again = tmp_path / "again"
    result = exported_in_process(lambda *o: rerun_config(first, *o), "validate=none",
                                 f"output.dir={again}")
    assert result.release_dir == again
    assert (again / "state_dict.bin").read_bytes() == (first / "state_dict.bin").read_bytes()


def test_rerun_keeps_a_relative_path_inside_the_dora_dir(job_config, tmp_path, musicgen_ckpt,
                                                         monkeypatch):
    dora = musicgen_ckpt.parent.parent.parent
    release = tmp_path / "release"
    monkeypatch.chdir(dora)
    exported_in_process(job_config, "input=xp", "input.dora_dir=.",
                        f"input.sig={musicgen_ckpt.parent.name}", "validate=none",
                        f"output.dir={release}")
    recorded = OmegaConf.to_container(OmegaConf.load(release / "export_config.yaml"))
    assert recorded["input"]["dora_dir"] == "${oc.env:AUDIOCRAFT_DORA_DIR,.}"


# --- the sweep table, the import's log lines, the transformers files' mode -------------------
def test_sweep_table_names_a_failed_job_by_its_own_override():
    common = ["input=xp", "input.dora_dir=/a/very/long/path/to/the/dora"]
    jobs = [{"job": 0, "status": "ok", "overrides": [*common, "input.sig=2120b163"],
             "source": "/a/very/long/path/to/the/dora/xps/2120b163/checkpoint.th",
             "release": "/x/sw/0/2120b163", "state": "best_state", "bytes": 2**20,
             "sha256": "a37f7817c144ffff", "validation": "load: ok", "seconds": 4.9},
            {"job": 1, "status": "failed", "overrides": [*common, "input.sig=0badc0de"],
             "error": "no XP '0badc0de' in /a/xps (2 XPs: 2120b163, af9ced24)", "seconds": 0.0}]
    table = format_table(jobs).splitlines()
    assert table[2].split() == ["1", "failed", "input.sig=0badc0de", "-", "-", "-", "-", "-",
                                "0.0"]
    assert table[1].split()[2] == "xps/2120b163/checkpoint.th"
    assert table[3] == "job 1 error: no XP '0badc0de' in /a/xps (2 XPs: 2120b163, af9ced24)"
    [alone] = [{**jobs[1], "overrides": ["input=checkpoint", "input.path=/p/q/r/s.th"]}]
    assert format_table([alone]).splitlines()[1].split()[2] == "input.path=/p/q/r/s.th"


def test_waiting_for_audiocraft_says_so_once_and_when_done(monkeypatch, caplog):
    for name in ("audiocraft", "audiocraft.models"):  # the import itself is not the point
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    importing = background_import.threading.Thread(target=lambda: __import__("time").sleep(2.5))
    monkeypatch.setattr(background_import, "JOIN_SECONDS", 0.1)
    monkeypatch.setattr(background_import, "_importing", importing)
    importing.start()
    with caplog.at_level(logging.INFO, logger=background_import.__name__):
        background_import.wait_for_audiocraft()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0] == "waiting for audiocraft's import to finish"
    assert re.fullmatch(r"audiocraft imported \(waited 2\.\d s\)", lines[1]), lines


def test_transformers_files_get_the_mode_of_the_release_files(tmp_path):
    from audiocraft_ext.transformers_format.files import _fsynced

    for name, mode in (("model.safetensors", 0o600), ("config.json", 0o664)):
        (tmp_path / name).write_text("{}")
        (tmp_path / name).chmod(mode)
    umask = os.umask(0o027)
    try:
        assert _fsynced(tmp_path) == ["config.json", "model.safetensors"]
    finally:
        os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o640}
