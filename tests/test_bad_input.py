"""Bad input: each case is refused with one readable line and changes nothing at the
destination.

The rules are checked in process (the ``refused`` fixture: the app's composed config, its job,
its one-line message). One case of each family (``through_app``) runs the real app in a fresh
process instead, for exit status 1, one [ERROR] line on stderr and no traceback: about two
seconds each, so all but the malicious pickle's are left to `make test`. Mistakes in the
command are Hydra's to find, before the job: those run the app (a fraction of a second, torch
is not imported). What needs a process of its own runs one: an environment read when
huggingface_hub is imported (offline), a file size limit, SIGKILL, HYDRA_FULL_ERROR."""

import fcntl
import importlib
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audiocraft_ext.untrusted.safe_load import load_checkpoint
from tests.support.app_cases import checkpoint_copy as _checkpoint
from tests.support.app_cases import exported_in_process
from tests.support.app_cases import input_args as _input
from tests.support.app_cases import rejected as _rejected
from tests.support.helpers import (
    app_command,
    app_env,
    assert_same_state,
    assert_validated,
    error_lines,
    member_span,
    release_state,
    run_app,
    sha256_of,
    torch_load,
)

THROUGH_APP = pytest.mark.through_app  # slow but one: an app process costs about two seconds


# --- mistakes in the command (Hydra's, found before the job: the app, without torch) ----------
@pytest.mark.parametrize("overrides, message", [
    (("input.sig=abc",), r"input.sig belongs to input=xp \(not input=demo\): add input=xp$"),
    (("input=xp", "input.sgi=abc"), r"no key input.sgi in input=xp; did you mean input.sig\?$"),
    (("input=xpp",), r"no option input=xpp \(options: checkpoint, demo, weights, xp\); did you "
                     r"mean input=xp\?$"),
    # a mistake without guidance of ours: Hydra's own words, in one line
    (("validate.duration=long",), r"Error merging override validate.duration=long; Value 'long' "
                                  r"of type 'str' could not be converted to Float$"),
    (("-m", "input.sgi=a,b"), r"no key input.sgi in input=demo; did you mean input.sig \(with "
                              r"input=xp\)\?$"),
    (("--cfg", "job", "input.sig=abc"), r"input.sig belongs to input=xp"),
])
def test_composition_mistake_is_one_line_with_the_fix(tmp_path, overrides, message):
    _rejected(tmp_path, *overrides, message=message)


def test_hydra_full_error_keeps_hydras_report_of_a_composition_mistake(tmp_path):
    proc = run_app("input.sig=abc", cwd=tmp_path, env={**app_env(), "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and error_lines(proc.stderr) == []
    assert "Traceback" in proc.stderr
    assert "hydra.errors.ConfigCompositionException: Could not override 'input.sig'." \
        in proc.stderr
    assert "Key 'sig' not in 'DemoInput'" in proc.stderr


def _dora_dir(tmp_path: Path, *sigs: str) -> Path:
    """A Dora dir whose xps/ holds (empty) XP folders named ``sigs``."""
    xps = tmp_path / "dora" / "xps"
    xps.mkdir(parents=True)
    for sig in sigs:
        (xps / sig).mkdir()
    return xps.parent


SIGS = ("fe734bf7", "fe734bf8", "0a1b2c3d", "99887766")


@pytest.mark.parametrize("sigs, found", [
    pytest.param(SIGS, "4 XPs; the most similar: fe734bf7, fe734bf8; mode=list shows them all)",
                 marks=[THROUGH_APP, pytest.mark.slow]),
    (SIGS[:2], "2 XPs: fe734bf7, fe734bf8)"),
    ((), "it holds no XP)"),
])
def test_unknown_signature_names_the_closest(tmp_path, refused, sigs, found):
    dora = _dora_dir(tmp_path, *sigs)
    refused(tmp_path, "input=xp", f"input.dora_dir={dora}", "input.sig=fe734bf",
            message=rf"no XP 'fe734bf' in {re.escape(str(dora / 'xps'))} "
                    rf"\({re.escape(found)}$")


@pytest.mark.parametrize("where, option", [("dora", "input=xp"), ("dora/xps", "input=checkpoint")])
def test_path_at_a_dora_dir_gives_the_command(tmp_path, refused, where, option):
    dora = _dora_dir(tmp_path, *SIGS)
    what = (r"is a Dora dir \(it holds xps/\)" if where == "dora"
            else rf"is the xps/ folder of the Dora dir {re.escape(str(dora))}")
    refused(tmp_path, option, f"input.path={tmp_path / where}",
            message=rf"{re.escape(str(tmp_path / where))} {what}: use input=xp "
                    rf"input.dora_dir={re.escape(str(dora))} input.sig=SIG \(4 XPs: "
                    rf"0a1b2c3d, 99887766, fe734bf7, \.\.\.; mode=list shows them all\)$")


@pytest.mark.slow  # HF_HUB_OFFLINE is read when huggingface_hub is imported: app processes
def test_t5_that_cannot_be_fetched_names_it_and_the_way_out(tmp_path, t5_ckpt):
    # offline, with an empty cache: what a machine without the Hub sees, without its retries
    offline = app_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    for level in ("full", "load"):  # both build the LM, hence its T5
        _rejected(tmp_path, *_input(t5_ckpt), f"validate={level}", env=offline,
                  message=r"validation cannot build the LM: it needs the T5 model 't5-base' "
                          r"\(text conditioner 'description'\), which transformers could not "
                          r"load here \(OSError\); T5 comes from the Hugging Face Hub or a local "
                          r"cache \(HF_HOME; HF_HUB_OFFLINE=1 reads only the cache\): run where "
                          r"either holds it, or use validate=none, the one level that does not "
                          r"build the LM$")
    run_app(*_input(t5_ckpt), "validate=none", f"output.dir={tmp_path / 'rel'}",
            f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path, env=offline, check=True)
    assert (tmp_path / "rel" / "state_dict.bin").exists()


# --- files that are not checkpoints ---------------------------------------------------------
def test_missing_path(tmp_path, refused):
    refused(tmp_path, *_input(tmp_path / "nope.th"),
            message=r"nope.th: no such checkpoint file or XP folder$")


@pytest.mark.slow
@THROUGH_APP
def test_folder_without_checkpoint(tmp_path, refused):
    (tmp_path / "xp").mkdir()
    refused(tmp_path, *_input(tmp_path / "xp"),
            message=r"xp is a folder without checkpoint.th and no checkpoint\*.th at all$")


def test_fsdp_rank_shard(tmp_path, refused, musicgen_ckpt):
    shard = _checkpoint(tmp_path, musicgen_ckpt, name="checkpoint.th.3")
    refused(tmp_path, *_input(shard),
            message=rf"checkpoint.th.3 is the FSDP shard of rank 3; export the rank-0 file "
                    rf"{re.escape(str(shard.with_name('checkpoint.th')))}, whose "
                    rf"fsdp_best_state holds the full model$")


@pytest.mark.parametrize("content, message", [
    (b"", r"is empty \(0 bytes\): not a checkpoint$"),
    (os.urandom(1 << 16), r"is not a readable torch checkpoint: "),
    (b"solver: musicgen\ndataset:\n  segment_duration: 30\n",
     r"is not a readable torch checkpoint: "),
], ids=["empty", "random-bytes", "text"])
def test_not_a_checkpoint(tmp_path, refused, content, message):
    path = tmp_path / "checkpoint.th"
    path.write_bytes(content)
    refused(tmp_path, *_input(path), message=message)


def test_truncated_checkpoint(tmp_path, refused, musicgen_ckpt):
    path = tmp_path / "checkpoint.th"
    path.write_bytes(musicgen_ckpt.read_bytes()[: musicgen_ckpt.stat().st_size // 2])
    refused(tmp_path, *_input(path),
            message=r"is truncated or damaged: it starts as a torch zip checkpoint but its "
                    r"zip directory \(at the end of the file\) is missing$")


def test_corrupt_member_of_the_exported_state(tmp_path, refused, musicgen_ckpt):
    path = _checkpoint(tmp_path, musicgen_ckpt)
    key = load_checkpoint(path)["best_state"]["model"]["emb.0.weight"].storage.key
    start, _ = member_span(path, f"data/{key}")
    data = bytearray(path.read_bytes())
    data[start + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(tmp_path, *_input(path),
            message=rf"is damaged: its record 'data/{key}' does not match its CRC-32$")


def test_legacy_non_zip_checkpoint_needs_trust(tmp_path, refused, job_config, musicgen_ckpt):
    path = tmp_path / "legacy" / "checkpoint.th"
    path.parent.mkdir()
    torch.save(torch_load(musicgen_ckpt), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    refused(tmp_path, *_input(path), message=r"is in torch's legacy \(pre-1.6\) format, which "
                                             r"cannot be read safely; re-save it with torch.save")
    exported_in_process(job_config, *_input(path), "compression=none", "input.trust=true",
                        f"output.dir={tmp_path / 'rel'}")
    assert_same_state(release_state(tmp_path / "rel" / "state_dict.bin"),
                      torch_load(musicgen_ckpt)["best_state"]["model"])


# --- code in the pickle ---------------------------------------------------------------------
class _Gadget:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _gadgets(marker: Path) -> dict[str, _Gadget]:
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Gadget(os.system, f"touch {marker}"),
        "subprocess.Popen": _Gadget(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Gadget(eval, touch),
        "builtins.exec": _Gadget(exec, touch),
        # imports a module of the attacker's, whose import writes the marker
        "importlib.import_module": _Gadget(importlib.import_module, "evil_module"),
    }


GADGETS = ["os.system", "subprocess.Popen", "builtins.eval", "builtins.exec",
           "importlib.import_module"]


@pytest.mark.parametrize("gadget, where", [
    pytest.param(gadget, where, id=f"{gadget}-{where}",
                 marks=[THROUGH_APP] if (gadget, where) == ("os.system", "history") else [])
    for where in ("history", "xp.cfg") for gadget in GADGETS])
def test_malicious_pickle_is_refused_before_running(tmp_path, refused, monkeypatch, musicgen_ckpt,
                                                    gadget, where):
    """In process too, the marker proves the payload never ran: this process would have run
    it (the attacker's module is importable here as in the app's process)."""
    marker = tmp_path / "payload-ran"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(tmp_path)
    payload = _gadgets(marker)[gadget]

    def edit(pkg):
        if where == "history":
            pkg["history"] = [{"train": {"ce": 1.0, "extra": [payload]}}]
        else:  # hidden in the DictConfig's own metadata, as a pickled attribute
            pkg["xp.cfg"]._metadata.resolver_cache["evil"] = payload

    path = _checkpoint(tmp_path, musicgen_ckpt, edit)
    refused(tmp_path, *_input(path), setenv={"PYTHONPATH": str(tmp_path)},
            message=rf"refusing to load {re.escape(str(path))}: it references "
                    rf"{re.escape(gadget)}, which is not allowed in a checkpoint")
    assert not marker.exists()
    assert "evil_module" not in sys.modules


def test_trust_is_an_explicit_loud_opt_out(tmp_path, refused, job_config, caplog, musicgen_ckpt):
    def edit(pkg):
        pkg["history"][0]["train"]["finished"] = datetime(2026, 1, 1)

    path = _checkpoint(tmp_path, musicgen_ckpt, edit)
    refused(tmp_path, *_input(path), "compression=none",
            message=r"it references datetime.datetime, which is not allowed")
    with caplog.at_level(logging.WARNING):
        exported_in_process(job_config, *_input(path), "compression=none", "input.trust=true",
                            f"output.dir={tmp_path / 'rel'}")
    assert "input.trust=true: unpickling" in caplog.text and "WITHOUT the allow-list" in caplog.text
    assert (tmp_path / "rel" / "state_dict.bin").exists()


# --- checkpoints without what a release needs -----------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda pkg: [pkg.pop("best_state"), pkg.pop("fsdp_best_state")],
     r"has no usable best state: neither fsdp_best_state nor best_state is present"),
    (lambda pkg: pkg.update(best_state={}, fsdp_best_state={}),
     r"has no usable best state: fsdp_best_state and best_state are empty"),
    (lambda pkg: pkg.pop("xp.cfg"), r"has no xp.cfg config \(no xp.cfg key\): audiocraft-ext "
                                    r"exports AudioCraft solver checkpoints"),
    (lambda pkg: pkg.update({"xp.cfg": "solver: musicgen"}),
     r"has no xp.cfg config \(str\): not an AudioCraft"),
], ids=["no-states", "empty-states", "no-cfg", "cfg-not-a-config"])
def test_checkpoint_lacks_what_a_release_needs(tmp_path, refused, musicgen_ckpt, edit, message):
    refused(tmp_path, *_input(_checkpoint(tmp_path, musicgen_ckpt, edit)), message=message)


def test_state_that_does_not_match_its_config(tmp_path, refused, musicgen_ckpt):
    def edit(pkg):
        state = pkg["best_state"]["model"]
        del state["out_norm.weight"]
        state["extra.weight"] = torch.zeros(3)
        state["emb.0.weight"] = torch.zeros(5, 7, dtype=torch.float16)

    refused(tmp_path, *_input(_checkpoint(tmp_path, musicgen_ckpt, edit)), "validate=load",
            message=r"validation 'load_lm_model' failed: the state does not match its "
                    r"xp.cfg: 1 missing key \(e.g. out_norm.weight\), 1 unexpected key \(e.g. "
                    r"extra.weight\), 1 wrong shape \(e.g. emb.0.weight: \[5, 7\] in the "
                    r"file, \[257, 32\] for the config\)$")


# --- the compression model ------------------------------------------------------------------
@pytest.mark.slow
@THROUGH_APP
def test_unknown_compression_model_signature(tmp_path, refused, musicgen_xp):
    refused(tmp_path, *_input(musicgen_xp(compression="//sig/0badc0de")),
            message=r"cannot resolve the compression model //sig/0badc0de: no XP '0badc0de' in ")


def test_missing_compression_model_file(tmp_path, refused, musicgen_ckpt):
    refused(tmp_path, *_input(musicgen_ckpt), "compression=checkpoint",
            f"compression.path={tmp_path / 'encodec.th'}",
            message=r"cannot resolve the compression model .*encodec.th: .*encodec.th: no such "
                    r"checkpoint file or XP folder$")


@pytest.mark.slow  # HF_HUB_OFFLINE is read when huggingface_hub is imported: app processes
def test_pretrained_compression_model_without_the_hub(tmp_path, job_config, musicgen_ckpt):
    args = (*_input(musicgen_ckpt), "compression=pretrained",
            "compression.name=facebook/encodec_32khz")
    offline = app_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    _rejected(tmp_path, *args, env=offline,
              message=r"the release points at the pretrained compression model "
                      r"'facebook/encodec_32khz', which could not be fetched here .* validate "
                      r"offline with validate.compression_model=<local copy>$")
    # the documented way out: validate with a local copy, still ship the pointer
    local = tmp_path / "local"
    exported_in_process(job_config, *_input(musicgen_ckpt), f"output.dir={local}", "validate=none")
    rel = tmp_path / "rel"
    run_app(*args, f"validate.compression_model={local / 'compression_state_dict.bin'}",
            f"output.dir={rel}", f"hydra.run.dir={tmp_path / 'run3'}", cwd=tmp_path,
            env=offline, check=True)
    pkg = torch.load(rel / "compression_state_dict.bin", weights_only=True)
    assert pkg["pretrained"] == "facebook/encodec_32khz"
    manifest = json.loads((rel / "export.json").read_text())
    assert manifest["validation"]["compression_stand_in"].endswith("compression_state_dict.bin")
    # the release's compression file is a pointer: no tensors of its own to check
    assert_validated(manifest, ["lm_file", "get_pretrained", "generate"])


# --- the destination ------------------------------------------------------------------------
@pytest.mark.slow
@THROUGH_APP
def test_output_exists_and_stays_untouched(tmp_path, refused, job_config, musicgen_ckpt):
    dest = tmp_path / "out" / "release"
    exported_in_process(job_config, *_input(musicgen_ckpt), f"output.dir={dest}", "validate=none")
    before = {p.name: sha256_of(p) for p in dest.iterdir()}
    refused(tmp_path, *_input(musicgen_ckpt), "state=last", keep=("release",),
            message=r"already exists; choose another output\.dir or set "
                    r"output\.overwrite=true to replace it once the new export validated$")
    assert {p.name: sha256_of(p) for p in dest.iterdir()} == before


def test_failed_overwrite_keeps_the_old_release(tmp_path, refused, job_config, musicgen_ckpt):
    """The new export fails in validation, after it was written (its config declares biases
    its state does not hold: audiocraft's loader refuses it)."""
    dest = tmp_path / "out" / "release"
    exported_in_process(job_config, *_input(musicgen_ckpt), f"output.dir={dest}", "validate=none")
    before = {p.name: sha256_of(p) for p in dest.iterdir()}

    def biased(pkg: dict) -> None:
        pkg["xp.cfg"].transformer_lm.bias_ff = True

    broken = _checkpoint(tmp_path / "src", musicgen_ckpt, biased)
    refused(tmp_path, *_input(broken), "output.overwrite=true", keep=("release",),
            message=r"validation 'get_pretrained' failed: the state does not match its xp.cfg: "
                    r"4 missing keys")
    assert {p.name: sha256_of(p) for p in dest.iterdir()} == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["release"]


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_output_location_not_writable(tmp_path, refused, musicgen_ckpt, where):
    (tmp_path / "file").write_text("not a folder")
    dest = tmp_path / "file" / "release" if where == "under-a-file" else Path("/proc/acx/release")
    refused(tmp_path, *_input(musicgen_ckpt), dest=dest,
            message=rf"cannot (create|write into) {re.escape(str(dest.parent))}: ")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.slow  # a file size limit (ulimit -f) is set on the app's process
def test_disk_full_mid_write(tmp_path, musicgen_ckpt):
    limit = musicgen_ckpt.stat().st_size // 20  # far below the LM file, above Hydra's own files

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    _rejected(tmp_path, *_input(musicgen_ckpt), preexec_fn=small_disk,
              message=rf"cannot write .*/out/\.release\.staging-\d+/state_dict\.bin: File too "
                      rf"large \(the file size limit, ulimit -f, is {limit} bytes\)$")


def test_concurrent_run_on_the_same_release_fails_clearly(tmp_path, refused, musicgen_ckpt):
    """In process too: flock locks belong to open files, so the test's lock excludes the job's
    as another process's would."""
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".release.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another export holds the release
        refused(tmp_path, *_input(musicgen_ckpt), keep=(".release.lock",),
                message=r"another export is writing .*/out/release right now$")


@pytest.mark.slow  # an app process, killed mid-export
def test_sigkill_mid_export_leaves_no_release_and_the_next_run_cleans_up(tmp_path, job_config,
                                                                          musicgen_ckpt):
    dest = tmp_path / "out" / "release"
    args = (*_input(musicgen_ckpt), f"output.dir={dest}")
    proc = subprocess.Popen(app_command(*args, "validate.duration=30",
                                        f"hydra.run.dir={tmp_path / 'run'}"),
                            cwd=tmp_path, env=app_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "out").glob(".release.staging-*/state_dict.bin")):
        assert proc.poll() is None and time.time() < deadline, "the export ended too early"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    [staging] = (tmp_path / "out").glob(".release.staging-*")
    exported_in_process(job_config, *args, "validate=load")
    assert not staging.exists()
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.md", "compression_state_dict.bin", "export.json", "export_config.yaml",
        "state_dict.bin", "training_curves.png"]
    config = OmegaConf.create(json.loads((dest / "export.json").read_text())["config"])
    assert config.validate.level == "load"


def test_an_error_while_composing_that_is_not_hydras_own_is_one_line(tmp_path):
    """Hydra reports other failures before the job (here an interpolation --resolve cannot
    resolve) in one line; so does the app, which asks Hydra to raise them."""
    proc = run_app("output.dir=${oc.env:AUDIOCRAFT_EXT_NO_SUCH_VARIABLE}", "--cfg", "job",
                   "--resolve", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "AUDIOCRAFT_EXT_NO_SUCH_VARIABLE" in line
