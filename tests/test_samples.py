"""The kept samples are what the release does: generated with the XP's own generation settings
(or stock audiocraft's, validate.generation=stock) and a recorded seed, written as audiocraft's
audio_write writes them, and reproduced by stock audiocraft from the manifest's record."""

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf, open_dict

from audiocraft_ext import export_release
from audiocraft_ext.config import GenerationChoice, ValidateConfig
from audiocraft_ext.reporting.samples import LM_KEYS, generation_settings
from audiocraft_ext.validation.lm import audio_defaults

DURATION = 0.5
# what audiocraft's solver/musicgen/default.yaml sets: greedy decoding, loudness-normalised WAV
XP_GENERATE = {"lm": {"use_sampling": False, "temp": 1.0, "top_k": 0,
                      "top_p": "${oc.env:XP_TOP_P,0.0}"},  # not a literal: the default
               "audio": {"format": "wav", "strategy": "loudness",
                         "sample_rate": "${sample_rate}", "loudness_headroom_db": 14}}


@pytest.fixture(scope="module")
def greedy_ckpt(derived_ckpt) -> Path:
    """The demo MusicGen XP with audiocraft's default musicgen generate settings."""
    def edit(pkg: dict) -> None:
        with open_dict(pkg["xp.cfg"]):
            pkg["xp.cfg"].generate = OmegaConf.create(XP_GENERATE)
    return derived_ckpt("greedy", edit)


def export(ckpt: Path, dest: Path, generation: str = "xp") -> dict:
    export_release(ckpt, dest, validate=ValidateConfig(duration=DURATION,
                                                       generation=GenerationChoice(generation)))
    return {s["name"]: s for s in json.loads((dest / "export.json").read_text())["samples"]}


def read_wav(path: Path) -> np.ndarray:
    wav, _ = soundfile.read(path, dtype="float32", always_2d=True)
    return wav


def assert_reproduced(release: Path, samples: dict) -> None:
    """Stock audiocraft, given the manifest's settings and seed, generates each kept WAV (to
    16-bit PCM precision, once normalised with audiocraft's own normalize_audio)."""
    from audiocraft.data.audio_utils import normalize_audio
    from audiocraft.models import MusicGen

    model = MusicGen.get_pretrained(str(release))
    for name, sample in samples.items():
        generation = sample["generation"]
        model.set_generation_params(**generation["params"])
        torch.manual_seed(generation["seed"])
        out = (model.generate([sample["description"]]) if name == "text"
               else model.generate_unconditional(1))[0]
        expected = normalize_audio(out, sample_rate=model.sample_rate, **generation["audio"])
        wav = read_wav(release / sample["audio"])
        assert sample["sample_rate"] == model.sample_rate
        assert wav.shape == expected.T.shape
        assert abs(wav - expected.T.numpy()).max() <= 1 / 32768 + 1e-6, name
        picture = matplotlib.image.imread(release / sample["spectrogram"])
        assert picture.shape[:2] == (300, 800)


def test_samples_are_what_the_release_generates(musicgen_ckpt, tmp_path):
    """An XP whose xp.cfg sets no generate section: audiocraft's defaults, each recorded as
    such, and the kept clips are the model's own output."""
    samples = export(musicgen_ckpt, tmp_path / "rel")
    assert set(samples) == {"unconditional", "text"}
    generation = samples["text"]["generation"]
    assert samples["text"]["description"] == ValidateConfig().description
    assert generation["settings"] == "xp" and generation["seed"] == 0
    assert generation["params"] == {"use_sampling": True, "top_k": 250, "top_p": 0.0,
                                    "temperature": 1.0, "cfg_coef": 3.0, "duration": DURATION}
    assert generation["audio"]["strategy"] == "peak"  # audio_write's default
    assert "generate.lm.top_k: not set; audiocraft's default 250" in generation["defaults"]
    assert_reproduced(tmp_path / "rel", samples)


def test_a_greedy_xp_is_sampled_greedily(greedy_ckpt, tmp_path):
    """The XP's generate.lm and generate.audio are the samples' settings, and the card's; a
    value that is not a literal falls back to audiocraft's default, saying so."""
    samples = export(greedy_ckpt, tmp_path / "rel")
    generation = samples["unconditional"]["generation"]
    assert generation["params"] == {"use_sampling": False, "top_k": 0, "top_p": 0.0,
                                    "temperature": 1.0, "cfg_coef": 3.0, "duration": DURATION}
    assert generation["audio"]["strategy"] == "loudness"
    assert generation["audio"]["loudness_headroom_db"] == 14
    assert generation["defaults"] == [
        "generate.lm.top_p: not a literal ('${oc.env:XP_TOP_P,0.0}'); audiocraft's default 0.0"]
    card = (tmp_path / "rel" / "README.md").read_text()
    assert ("model.set_generation_params(use_sampling=False, top_k=0, top_p=0.0, "
            f"temperature=1.0, cfg_coef=3.0, duration={DURATION})") in card
    assert "torch.manual_seed(0)" in card and '`strategy="loudness"`' in card
    assert_reproduced(tmp_path / "rel", samples)

    stock = export(greedy_ckpt, tmp_path / "stock", generation="stock")
    assert stock["text"]["generation"]["params"]["use_sampling"] is True
    assert stock["text"]["generation"]["audio"]["strategy"] == "peak"
    assert stock["text"]["generation"]["defaults"] == []
    for name in ("unconditional", "text"):
        greedy = read_wav(tmp_path / "rel" / samples[name]["audio"])
        sampled = read_wav(tmp_path / "stock" / stock[name]["audio"])
        assert abs(greedy - sampled).max() > 0.01, name
    assert_reproduced(tmp_path / "stock", stock)


def test_invalid_settings_fall_back_saying_so():
    cfg = OmegaConf.create({"generate": {"lm": {"use_sampling": "yes", "top_k": -3,
                                                "top_p": 0.5, "temp": 2}},
                            "classifier_free_guidance": {"inference_coef": 1.5}})
    defaults = {"use_sampling": True, "top_k": 250, "top_p": 0.0, "temperature": 1.0,
                "cfg_coef": 3.0}
    audio = audio_defaults()  # audio_write's
    got = generation_settings(cfg, GenerationChoice.xp, 7, LM_KEYS, defaults, audio,
                              {"duration": 1.0})
    assert got.params == {"use_sampling": True, "top_k": 250, "top_p": 0.5,
                          "temperature": 2.0, "cfg_coef": 1.5, "duration": 1.0}
    assert got.defaults == [
        "generate.lm.use_sampling: 'yes' is not a valid use_sampling; audiocraft's default True",
        "generate.lm.top_k: -3 is not a valid top_k; audiocraft's default 250"]
    assert got.audio["strategy"] == "peak" and got.audio["loudness_headroom_db"] == 14
    stock = generation_settings(cfg, GenerationChoice.stock, 7, LM_KEYS, defaults, audio)
    assert stock.params == defaults and stock.defaults == [] and stock.seed == 7
