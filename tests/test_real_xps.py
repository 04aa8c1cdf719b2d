"""Every model family and state choice, exported through the app from XPs that audiocraft's
own training entry point wrote (scripts/train_fixtures.py: dora run on CPU, cached)."""

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audiocraft_ext import ExportError, NoCompression, StateConfig, ValidateConfig, export_release
from tests.support.helpers import (
    FULL_CHECKS,
    assert_same_state,
    assert_validated,
    release_state,
    run_app,
    torch_load,
)


def _export(tmp_path, *args, check=True):
    out = tmp_path / "release"
    proc = run_app(*args, f"output.dir={out}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=check)
    manifest = json.loads((out / "export.json").read_text()) if out.exists() else None
    return proc, out, manifest


def _checks(manifest):
    return {c["check"]: c for c in manifest["validation"]["checks"]}


@pytest.mark.parametrize("name, model_class", [("musicgen", "MusicGen"),
                                               ("audiogen", "AudioGen"),
                                               ("magnet", "MAGNeT")])
def test_lm_families_validate_with_their_model_class(real_xps, tmp_path, name, model_class):
    xp = real_xps["xps"][name]
    _, out, manifest = _export(tmp_path, "input=xp", f"input.dora_dir={real_xps['dora_dir']}",
                               f"input.sig={xp['sig']}")
    assert_validated(manifest, FULL_CHECKS)
    assert _checks(manifest)["get_pretrained"]["model_class"] == model_class
    # get_pretrained's own loaders built both models, each compared with its source state
    reload = "load_lm_model_magnet" if name == "magnet" else "load_lm_model"
    assert _checks(manifest)["get_pretrained"]["proves"] == ["load_compression_model", reload]
    assert_same_state(release_state(out / "state_dict.bin"),
                      torch_load(xp["checkpoint"])["best_state"]["model"])
    encodec = real_xps["xps"][{"audiogen": "encodec16"}.get(name, "encodec")]["checkpoint"]
    assert_same_state(release_state(out / "compression_state_dict.bin"),
                      torch_load(encodec)["best_state"]["model"])
    # the model card states the family's facts from the release's own configs
    card = (out / "README.md").read_text()
    cfg = torch_load(xp["checkpoint"])["xp.cfg"]
    assert f"loaded with `audiocraft.models.{model_class}`" in card
    assert f"{cfg.sample_rate} Hz" in card and "at 50 frames/s" in card
    assert "2 epoch(s) trained" in card and "![Training curves](training_curves.png)" in card
    assert [s["name"] for s in manifest["samples"]] == ["unconditional", "text"]
    assert all((out / s["audio"]).is_file() for s in manifest["samples"])
    # generated as the XP's solver generates (its generate.lm), not with the stock defaults
    params = manifest["samples"][0]["generation"]["params"]
    assert params["use_sampling"] == cfg.generate.lm.use_sampling
    assert params["top_k"] == cfg.generate.lm.top_k
    if name == "magnet":  # the XP's few decoding steps, not MAGNeT's [20, 10, 10, 10]
        assert params["decoding_steps"] == list(cfg.generate.lm.decoding_steps)


def test_encodec_xp_gives_a_compression_model_only_release(real_xps, tmp_path):
    xp = real_xps["xps"]["encodec"]
    _, out, manifest = _export(tmp_path, "input=checkpoint", f"input.path={xp['checkpoint']}")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "compression_state_dict.bin", "export.json", "export_config.yaml",
        "samples", "training_curves.png"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "input.png", "input.wav", "reconstruction.png", "reconstruction.wav"]
    assert "4 x 400 entries at 50 frames/s" in (out / "README.md").read_text()
    assert_validated(manifest, ["compression_file", "get_pretrained", "encode_decode"])
    assert _checks(manifest)["encode_decode"]["codes"][:2] == [1, 4]
    pkg = torch.load(out / "compression_state_dict.bin", weights_only=True)
    assert sorted(pkg) == ["best_state", "exported", "version", "xp.cfg"]  # = export_encodec
    assert OmegaConf.create(pkg["xp.cfg"]).solver == "compression"


def test_ema_state(real_xps, tmp_path):
    xp = real_xps["xps"]["musicgen_ema"]
    _, out, manifest = _export(tmp_path, "input=checkpoint", f"input.path={xp['checkpoint']}",
                               "state=ema", "validate=load")
    ema = torch_load(xp["checkpoint"])["ema"]["state"]["model"]
    assert {t.dtype for t in ema.values()} == {torch.float32}  # EMA is kept in float32
    assert_same_state(release_state(out / "state_dict.bin"), ema)
    assert manifest["state"]["key"] == "ema"


def test_ema_state_when_ema_was_off(real_xps, refused, tmp_path):
    xp = real_xps["xps"]["musicgen"]
    out = tmp_path / "release"
    refused(tmp_path, "input=checkpoint", f"input.path={xp['checkpoint']}", "state=ema", dest=out,
            message=re.escape("state=ema, but EMA was off in this run ('ema' is None; "
                              "optim.ema.use=false); choose state=best or state=last") + "$")
    assert not out.exists()


def test_epoch_checkpoint(real_xps, tmp_path):
    xp = real_xps["xps"]["musicgen"]
    _, out, manifest = _export(tmp_path, "input=xp", f"input.path={xp['folder']}",
                               "input.epoch=1", "state=last", "validate=load")
    assert manifest["source"]["path"].endswith("/checkpoint_1.th")
    assert_same_state(release_state(out / "state_dict.bin"),
                      torch_load(Path(xp["folder"]) / "checkpoint_1.th")["model"])


def test_average_of_the_last_epochs(real_xps, tmp_path):
    xp = real_xps["xps"]["musicgen"]
    _, out, manifest = _export(tmp_path, "input=xp", f"input.path={xp['folder']}",
                               "state=average", "state.last_k=2")
    members = [torch_load(Path(xp["folder"]) / f"checkpoint_{e}.th")["model"] for e in (1, 2)]
    # the mean in float32, cast back to each tensor's dtype (integer tensors: the last's)
    mean = {k: ((t.float() + members[1][k].float()) / 2).to(t.dtype) if t.is_floating_point()
            else members[1][k] for k, t in members[0].items()}
    assert_same_state(release_state(out / "state_dict.bin"), mean)
    assert [Path(m["path"]).name for m in manifest["state"]["members"]] == [
        "checkpoint_1.th", "checkpoint_2.th"]
    assert manifest["state"]["key"] == "average"
    assert_validated(manifest, FULL_CHECKS)


def test_average_refuses_mismatched_members(real_xps, tmp_path):
    xp = real_xps["xps"]["musicgen"]
    bad = tmp_path / "xp"
    bad.mkdir()
    for epoch in (1, 2):
        pkg = torch_load(Path(xp["folder"]) / f"checkpoint_{epoch}.th")
        if epoch == 2:
            pkg["model"]["out_norm.weight"] = torch.zeros(7)
        torch.save(pkg, bad / f"checkpoint_{epoch}.th")
    (bad / "checkpoint.th").write_bytes(Path(xp["checkpoint"]).read_bytes())
    with pytest.raises(ExportError, match=r"state=average: 'out_norm.weight' is \(\d+,\) "
                                          r"torch.float32 in checkpoint_1.th but \(7,\) "
                                          r"torch.float32 in checkpoint_2.th"):
        export_release(bad, tmp_path / "rel", state=StateConfig(select="average", last_k=2),
                       compression=NoCompression())
    assert not (tmp_path / "rel").exists()


def test_conditioners_null_is_repaired_and_recorded(real_xps, tmp_path):
    """audiocraft's load_lm_model crashes on `conditioners: null`; `{}` loads the same model."""
    xp = real_xps["xps"]["musicgen"]
    pkg = torch_load(xp["checkpoint"])
    cfg = pkg["xp.cfg"]
    OmegaConf.set_struct(cfg, False)
    cfg.conditioners = None
    cfg.fuser.cross = []
    cfg.transformer_lm.cross_attention = True  # keep the trained layers' shapes
    pkg["best_state"]["model"] = {k: v for k, v in pkg["best_state"]["model"].items()
                                  if not k.startswith("condition_provider.")}
    path = tmp_path / "xps" / xp["sig"] / "checkpoint.th"
    path.parent.mkdir(parents=True)
    torch.save(pkg, path)
    result = export_release(path, tmp_path / "rel", compression=NoCompression(),
                            validate=ValidateConfig(level="load"))
    assert result.manifest.repairs == [
        "conditioners: null -> {} (audiocraft's load_lm_model crashes on null: _delete_param "
        "tests membership in None; {} builds the same unconditioned model)"]
    shipped = OmegaConf.create(torch.load(tmp_path / "rel" / "state_dict.bin",
                                          weights_only=True)["xp.cfg"])
    assert shipped.conditioners == {}
    # the unrepaired form is what stock audiocraft cannot load
    from audiocraft.models import loaders

    unrepaired = tmp_path / "unrepaired"
    unrepaired.mkdir()
    torch.save({"best_state": pkg["best_state"]["model"], "xp.cfg": OmegaConf.to_yaml(cfg),
                "version": "1.3.0", "exported": True}, unrepaired / "state_dict.bin")
    with pytest.raises(TypeError):
        loaders.load_lm_model(unrepaired)


def test_inspect(real_xps, tmp_path):
    xp = real_xps["xps"]["musicgen_ema"]
    proc = run_app("mode=inspect", "inspect.json=true", "input=checkpoint",
                   f"input.path={xp['checkpoint']}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=True)
    info = json.loads(proc.stdout)
    assert info["solver"] == "musicgen" and info["xp_sig"] == xp["sig"]
    assert info["epochs"] == 2 and "valid" in info["last_metrics"]
    assert info["states"]["fsdp_best_state"] == "empty"
    assert info["states"]["best_state"]["dtypes"] == {"bfloat16": 37}
    assert info["states"]["ema"]["dtypes"] == {"float32": 37}
    assert info["state_auto"] == "best_state"
    assert info["compression_model_checkpoint"] == f"//sig/{real_xps['xps']['encodec']['sig']}"
    text = run_app("mode=inspect", "input=xp",
                   f"input.path={real_xps['xps']['musicgen']['folder']}",
                   f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path, check=True).stdout
    assert "ema              none" in text and "checkpoint_1.th, checkpoint_2.th" in text
    assert not (tmp_path / "run" / xp["sig"]).exists()  # nothing exported
