"""export_app.py: through hydra.compose (its job, in process), and as a subprocess the way
users run it.

Each subprocess run imports torch and audiocraft afresh (about two seconds): what a process
shows runs one (exit status and one error line, --help and --cfg without torch, the demo end
to end, a multirun, the console script), the rest runs the job in process. The exports
through the app are marked slow."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audiocraft_ext.app.job import run
from tests.support.app_cases import exported_in_process
from tests.support.helpers import (
    FULL_CHECKS,
    ROOT,
    app_env,
    assert_same_state,
    assert_validated,
    error_lines,
    imported_modules,
    release_state,
    run_app,
    sha256_of,
    torch_load,
)


def test_run_on_a_composed_config(job_config, musicgen_ckpt, tmp_path):
    cfg = job_config("input=checkpoint", f"input.path={musicgen_ckpt}",
                     f"output.dir={tmp_path}/rel", "validate=load")
    result = run(cfg)
    assert result.release_dir == tmp_path / "rel"
    # recorded relative to the Dora dir (output.record_paths=relative, the default)
    assert result.manifest.config["input"] == {
        "path": f"xps/{musicgen_ckpt.parent.name}/checkpoint.th", "trust": False}
    assert result.manifest.validation.level == "load"
    saved = OmegaConf.load(tmp_path / "rel" / "export_config.yaml")
    assert saved.defaults[1] == {"input": "checkpoint"}
    # a re-run finds the Dora dir through AudioCraft's own variable, else from the current folder
    assert OmegaConf.to_container(saved)["input"]["path"] == (
        "${oc.env:AUDIOCRAFT_DORA_DIR,.}" f"/xps/{musicgen_ckpt.parent.name}/checkpoint.th")
    # a path outside the Dora dir is not recorded: a re-run must give it again
    assert OmegaConf.is_missing(saved.output, "dir")
    assert "hydra" not in saved  # the app's settings come by name, nothing of this run


def test_saved_config_composes_the_apps_hydra_settings(job_config, compose_config,
                                                       musicgen_ckpt, tmp_path):
    """export_config.yaml, found as --config-dir finds it (the release folder, then the
    package's conf/), gets the hydra settings of conf/export.yaml."""
    run(job_config("input=checkpoint", f"input.path={musicgen_ckpt}",
                   f"output.dir={tmp_path}/rel", "validate=none"))
    with initialize_config_dir(str(tmp_path / "rel"), version_base="1.3"):
        rerun = compose("export_config", return_hydra_config=True,
                        overrides=[f"hydra.searchpath=[file://{ROOT / 'conf'}]"])
    got, want = (OmegaConf.to_container(c.hydra) for c in (rerun, compose_config(hydra=True)))
    for key in ("run", "sweep", "callbacks", "job_logging", "help"):
        assert got[key] == want[key], key
    assert (got["job"]["name"], got["job"]["chdir"]) == ("export_app", False)
    assert rerun.hydra.job_logging.handlers.console.stream == "ext://sys.stderr"
    # without AUDIOCRAFT_DORA_DIR, the recorded path resolves from the current folder
    assert rerun.input.path == f"./xps/{musicgen_ckpt.parent.name}/checkpoint.th"
    assert rerun.validate.level == "none"
    # another option of a group takes effect: the saved values leave its own keys to it
    with initialize_config_dir(str(tmp_path / "rel"), version_base="1.3"):
        other = compose("export_config", overrides=[
            f"hydra.searchpath=[file://{ROOT / 'conf'}]", "validate=load", "state=last"])
    assert (other.validate.level, other.state.select) == ("load", "last")
    assert other.validate.duration == rerun.validate.duration


@pytest.mark.slow
def test_no_arguments_runs_the_demo_end_to_end(tmp_path):
    proc = run_app(f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, check=True)
    release = tmp_path / "run" / proc.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert proc.stdout.strip().splitlines()[-1] == str(release)
    assert sorted(p.name for p in release.iterdir()) == [
        "README.md", "compression_state_dict.bin", "export.json", "export_config.yaml",
        "samples", "state_dict.bin", "training_curves.png"]
    manifest = json.loads((release / "export.json").read_text())
    assert manifest["source"]["path"].startswith("xps/")  # relative to the demo's Dora dir
    assert manifest["compression"]["reference"].startswith("//sig/")
    assert_validated(manifest, FULL_CHECKS)
    assert manifest["config"]["validate"]["level"] == "full"
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert saved.state.select == "auto"
    assert (tmp_path / "run" / "export_app.log").read_text().count("validate=full: lm_file ok") == 1


@pytest.mark.slow
def test_checkpoint_path_then_get_pretrained_elsewhere(musicgen_ckpt, tmp_path):
    run_app("input=checkpoint", f"input.path={musicgen_ckpt}", f"hydra.run.dir={tmp_path}/run",
            cwd=tmp_path, check=True)
    release = tmp_path / "run" / musicgen_ckpt.parent.name
    code = ("import sys; from audiocraft.models import MusicGen; "
            "m = MusicGen.get_pretrained(sys.argv[1], device='cpu'); "
            "m.set_generation_params(duration=1); print(tuple(m.generate_unconditional(2).shape))")
    out = subprocess.run([sys.executable, "-c", code, str(release)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "(2, 1, 32000)"


def test_dora_signature_with_explicit_state_and_output(job_config, fsdp_ckpt, tmp_path):
    dora_dir = fsdp_ckpt.parent.parent.parent
    out = tmp_path / "release"
    exported_in_process(job_config, "input=xp", f"input.dora_dir={dora_dir}",
                        f"input.sig={fsdp_ckpt.parent.name}", "state=best", "validate=load",
                        f"output.dir={out}")
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["state"]["key"] == "best_state"
    assert manifest["source"]["xp_sig"] == fsdp_ckpt.parent.name.split("-")[0]


def test_missing_state_exits_non_zero_with_one_line(no_best_ckpt, tmp_path):
    proc = run_app("input=checkpoint", f"input.path={no_best_ckpt}", f"hydra.run.dir={tmp_path}",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = error_lines(proc.stderr)
    assert line.endswith(f"{no_best_ckpt} has no usable best state: fsdp_best_state and "
                         "best_state are empty (state=last exports the raw model weights instead)")
    assert not (tmp_path / no_best_ckpt.parent.name).exists()


def test_existing_release_is_an_error_and_untouched(refused, job_config, musicgen_ckpt,
                                                    tmp_path):
    out = tmp_path / "release"
    args = ("input=checkpoint", f"input.path={musicgen_ckpt}", "validate=none")
    exported_in_process(job_config, *args, f"output.dir={out}")
    digest = sha256_of(out / "state_dict.bin")
    refused(tmp_path, *args, "state=last", dest=out,
            message=re.escape(f"{out} already exists; choose another output.dir or set "
                              "output.overwrite=true to replace it once the new export "
                              "validated") + "$")
    assert sha256_of(out / "state_dict.bin") == digest


def test_missing_mandatory_value(refused, tmp_path):
    refused(tmp_path, "input=checkpoint",
            message=re.escape("input.path is required: add input.path=... to the command") + "$")


def test_cfg_job_and_help_neither_import_torch_nor_write(tmp_path):
    """Reading the configuration is instant: torch and audiocraft take seconds to import."""
    env = app_env(PYTHONPROFILEIMPORTTIME="1")  # = python -X importtime: imports on stderr
    proc = run_app("--cfg", "job", "state=fsdp_best", "input=checkpoint", "input.path=x.th",
                   cwd=tmp_path, check=True, env=env)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.state.select == "fsdp_best" and cfg.input.path == "x.th"
    helped = run_app("--help", cwd=tmp_path, check=True, env=env)
    assert "input: checkpoint, demo, weights, xp" in helped.stdout
    assert "state: auto, average, best, ema, fsdp_best, last" in helped.stdout
    groups = helped.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert [line.split(":")[0] for line in groups.strip().splitlines()[2:]] == [
        "compression", "input", "output", "state", "validate"]  # not the internal schema/*
    for stderr in (proc.stderr, helped.stderr):
        modules = imported_modules(stderr)
        assert "hydra" in modules and "audiocraft_ext.config" in modules  # the report works
        assert [m for m in modules if m.split(".")[0] in ("torch", "torchaudio", "audiocraft")
                or m == "audiocraft_ext.app.job"] == []
    assert not list(tmp_path.iterdir())  # neither writes outputs


@pytest.mark.slow
def test_multirun_sweeps_over_checkpoints(musicgen_ckpt, fsdp_ckpt, tmp_path):
    proc = run_app("-m", "input=checkpoint", f"input.path={musicgen_ckpt},{fsdp_ckpt}",
                   "validate=load", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path, check=True)
    # state=auto: best_state of the first, the (different) fsdp_best_state of the second
    for job, (ckpt, key) in enumerate([(musicgen_ckpt, "best_state"),
                                       (fsdp_ckpt, "fsdp_best_state")]):
        release = tmp_path / "sweep" / str(job) / ckpt.parent.name
        manifest = json.loads((release / "export.json").read_text())
        assert manifest["source"]["path"] == f"xps/{ckpt.parent.name}/checkpoint.th"
        assert_same_state(release_state(release / "state_dict.bin"),
                          torch_load(ckpt)[key]["model"])
        assert (tmp_path / "sweep" / str(job) / ".hydra" / "overrides.yaml").exists()
        assert str(release) in proc.stdout.splitlines()


@pytest.mark.slow
def test_console_script_runs_the_same_app(musicgen_ckpt, tmp_path):
    script = Path(sys.executable).parent / "audiocraft-export"
    proc = subprocess.run([str(script), "input=checkpoint", f"input.path={musicgen_ckpt}",
                           "validate=none", f"output.dir={tmp_path / 'rel'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "rel")
    assert (tmp_path / "rel" / "state_dict.bin").exists()
