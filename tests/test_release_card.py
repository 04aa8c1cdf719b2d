"""What a release tells a person: its model card, kept samples and pictures, and nothing
private about the machine that made it."""

import json
import re
import socket
from pathlib import Path

import matplotlib.image
import pytest
import soundfile
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from audiocraft_ext import export_release
from audiocraft_ext.config import ValidateConfig
from tests.support.app_cases import checkpoint_copy
from tests.support.helpers import app_env, run_app, sha256_of, torch_load


@pytest.fixture(scope="module")
def release(musicgen_ckpt, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("card") / "musicgen"
    export_release(musicgen_ckpt, dest, validate=ValidateConfig(level="full", duration=0.5))
    return dest


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_release_folder_holds_card_samples_and_curves(release):
    names = sorted(str(p.relative_to(release)) for p in release.rglob("*"))
    assert names == ["README.md", "compression_state_dict.bin", "export.json",
                     "samples", "samples/text.png", "samples/text.wav",
                     "samples/unconditional.png", "samples/unconditional.wav",
                     "state_dict.bin", "training_curves.png"]


def test_model_card_front_matter_and_facts(release, musicgen_ckpt):
    card = (release / "README.md").read_text()
    manifest = json.loads((release / "export.json").read_text())
    meta = front_matter(card)
    assert meta["library_name"] == "audiocraft" and meta["pipeline_tag"] == "text-to-audio"
    assert meta["license"] == "unknown" and "License not set" in card
    assert {"audiocraft", "musicgen"} <= set(meta["tags"])
    source = torch_load(musicgen_ckpt)
    params = sum(t.numel() for t in source["best_state"]["model"].values())
    assert f"({params:,})" in card
    cfg = source["xp.cfg"]
    assert f"{cfg.sample_rate} Hz" in card
    assert f"{cfg.transformer_lm.n_q} x {cfg.transformer_lm.card} entries at 50 frames/s" in card
    assert f"`{cfg.codebooks_pattern.modeling}` pattern" in card
    assert f"Training segments | {cfg.dataset.segment_duration:g} s" in card
    history = source["history"]
    assert f"{len(history)} epoch(s) trained" in card
    assert f"Best valid `ce` {history[-1]['valid']['ce']:.4g}" in card
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        assert f"sha256 `{sha256_of(release / name)}`" in card
        assert manifest["files"][name]["sha256"] == sha256_of(release / name)
    assert f'MusicGen.get_pretrained("{release.name}")' in card
    # absolute through the shell's $PWD: audiocraft's training runs in its own XP folder
    assert (f"continue_from=//pretrained/$PWD/{release.name} compression_model_checkpoint="
            f"//pretrained/$PWD/{release.name}/compression_state_dict.bin") in card
    for check in ("lm_file", "compression_file", "get_pretrained", "generate"):
        assert f"- `{check}`" in card
    assert "![Training curves](training_curves.png)" in card
    assert '<audio controls src="samples/text.wav"></audio>' in card


def test_training_curves_picture(release):
    picture = matplotlib.image.imread(release / "training_curves.png")
    assert picture.ndim == 3 and picture.shape[0] == 300 and picture.std() > 0


def test_samples_off_and_license_set(musicgen_ckpt, tmp_path):
    dest = tmp_path / "rel"
    export_release(musicgen_ckpt, dest, validate="full", samples=False, license="cc-by-nc-4.0")
    assert not (dest / "samples").exists() and not (dest / "training_curves.png").exists()
    card = (dest / "README.md").read_text()
    assert front_matter(card)["license"] == "cc-by-nc-4.0"
    assert "License not set" not in card and "## Listen" not in card


def test_encodec_release_keeps_its_round_trip(encodec_ckpt, tmp_path):
    dest = tmp_path / "rel"
    result = export_release(encodec_ckpt, dest, validate=ValidateConfig(duration=0.5))
    card = (dest / "README.md").read_text()
    meta = front_matter(card)
    assert "pipeline_tag" not in meta and "encodec" in meta["tags"]
    assert "CompressionModel.get_pretrained" in card and "Fine-tune" not in card
    assert [s["name"] for s in result.manifest.samples] == ["input", "reconstruction"]
    rate = result.manifest.model.sample_rate
    for sample in result.manifest.samples:
        wav, sr = soundfile.read(dest / sample["audio"])
        assert sr == rate and len(wav) == int(0.5 * rate)


def test_a_release_with_samples_is_replaced_only_as_a_whole(musicgen_ckpt, tmp_path):
    """overwrite recognises a release by its exact files: samples/ with anything else in it
    makes the folder someone's data, never replaced."""
    dest = tmp_path / "rel"
    export_release(musicgen_ckpt, dest, validate="full")
    export_release(musicgen_ckpt, dest, validate="full", overwrite=True)
    (dest / "samples" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="samples/notes.txt"):
        export_release(musicgen_ckpt, dest, validate="full", overwrite=True)
    assert (dest / "samples" / "notes.txt").read_text() == "mine"


PRIVATE_USER = "zqprivateuser"


@pytest.mark.slow  # an app process (HOME is read when huggingface_hub is imported)
def test_nothing_private_in_a_release_made_under_a_fake_home(musicgen_ckpt, tmp_path):
    """Home folder, user name and host name appear in no file of the release, though the
    checkpoint's xp.cfg names folders under that home."""
    home = tmp_path / "home" / PRIVATE_USER
    dora = home / "dora"

    def private_paths(pkg: dict) -> None:
        with open_dict(pkg["xp.cfg"]):
            pkg["xp.cfg"].datasource = {"train": str(home / "data" / "train.jsonl"),
                                        "valid": f"{home}/data/${{oc.env:USER}}"}
    ckpt = checkpoint_copy(home, musicgen_ckpt, private_paths)
    assert ckpt.parent.parent.parent == dora
    dest = home / "releases" / "mine"
    env = app_env(HOME=str(home), USER=PRIVATE_USER, LOGNAME=PRIVATE_USER)
    run_app("input=xp", f"input.dora_dir={dora}", f"input.sig={ckpt.parent.name}",
            f"output.dir={dest}", "validate.duration=0.5", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=home, env=env, check=True)
    host = socket.gethostname()
    texts = {p.name: p.read_text() for p in dest.glob("*") if p.suffix in (".md", ".json",
                                                                          ".yaml")}
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        texts[f"{name}: xp.cfg"] = torch.load(dest / name, weights_only=True)["xp.cfg"]
    assert set(texts) == {"README.md", "export.json", "export_config.yaml",
                          "state_dict.bin: xp.cfg", "compression_state_dict.bin: xp.cfg"}
    for name, text in texts.items():
        for private in (str(tmp_path), PRIVATE_USER, host):
            assert private not in text, (name, private)
    every_byte = b"".join(p.read_bytes() for p in dest.rglob("*") if p.is_file())
    assert str(tmp_path).encode() not in every_byte and PRIVATE_USER.encode() not in every_byte
    recorded = OmegaConf.create(texts["state_dict.bin: xp.cfg"]).datasource
    assert recorded.train == "train.jsonl"  # outside the Dora dir: its name alone
    manifest = json.loads(texts["export.json"])
    assert manifest["source"]["path"] == f"xps/{ckpt.parent.name}/checkpoint.th"
    assert sorted(manifest["paths_recorded"]) == [
        "state_dict.bin: datasource.train", "state_dict.bin: datasource.valid"]


def test_the_home_folder_inside_a_longer_value_is_recorded_as_tilde():
    from audiocraft_ext.writing.recorded_paths import PathRecorder

    home = str(Path.home())
    recorder = PathRecorder(dora_dir=None)
    assert recorder.values({"a": f"[{home}/data,{home}/more]", "b": f"${{x,{home}/d}}"}) == {
        "a": "[~/data,~/more]", "b": "${x,~/d}"}
    assert recorder.overrides([f"dset.train=[{home}/a]"]) == ["dset.train=[~/a]"]
    assert PathRecorder(None, absolute=True).values({"a": f"[{home}/x]"}) == {
        "a": f"[{home}/x]"}


def test_record_paths_absolute_keeps_xp_cfg_as_export_lm_writes_it(musicgen_ckpt, tmp_path):
    dest = tmp_path / "rel"

    def absolute_path(pkg: dict) -> None:
        with open_dict(pkg["xp.cfg"]):
            pkg["xp.cfg"].datasource = {"train": str(tmp_path / "data")}
    ckpt = checkpoint_copy(tmp_path, musicgen_ckpt, absolute_path)
    result = export_release(ckpt, dest, validate="none", record_paths="absolute")
    source = torch_load(ckpt)
    pkg = torch.load(dest / "state_dict.bin", weights_only=True)
    assert pkg["xp.cfg"] == OmegaConf.to_yaml(source["xp.cfg"])
    assert result.manifest.source.path == str(ckpt) and result.manifest.paths_recorded == []


@pytest.mark.parametrize("text", ["x $^$ y", "a $\\frac beat$", "$$"])
def test_titles_are_text_not_mathtext(tmp_path, text):
    """A prompt or a metric name with dollar signs draws as it is written (matplotlib would
    parse it as mathtext and fail)."""
    from audiocraft_ext.reporting.figures import spectrogram_png, training_curves_png

    spectrogram_png(torch.randn(1, 8000) * 0.1, 16000, text, tmp_path / "s.png")
    training_curves_png({text: {"train": [1.0, 0.5]}}, 2, text, tmp_path / "c.png")
    assert matplotlib.image.imread(tmp_path / "s.png").shape[:2] == (300, 800)
    assert matplotlib.image.imread(tmp_path / "c.png").ndim == 3
