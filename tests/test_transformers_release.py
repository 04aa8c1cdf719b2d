"""output.transformers=true through the app: a real T5-conditioned, delay-pattern XP trained by
audiocraft becomes one folder that AudioCraft's and transformers' loaders both load offline,
with the equivalence proof in its manifest; what cannot be represented is refused in one line
before anything is written."""

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.support.app_cases import input_args
from tests.support.helpers import OFFLINE, app_env, run_app

HF_FILES = ["config.json", "generation_config.json", "model.safetensors",
            "preprocessor_config.json", "spiece.model", "tokenizer.json",
            "tokenizer_config.json"]

# A fresh process, offline, as a user of the folder would be: both loaders, then generation.
LOAD_BOTH = """
import sys, torch, transformers, audiocraft.models
folder, family = sys.argv[1], sys.argv[2]
model = transformers.MusicgenForConditionalGeneration.from_pretrained(folder)
processor = transformers.AutoProcessor.from_pretrained(folder)
inputs = processor(text=["a test"], return_tensors="pt")
audio = model.generate(**inputs, do_sample=False, max_new_tokens=8)
ours = getattr(audiocraft.models, family).get_pretrained(folder)
print(type(processor).__name__, tuple(audio.shape), bool(torch.isfinite(audio).all()),
      ours.sample_rate == model.config.audio_encoder.sampling_rate)
"""


@pytest.mark.parametrize("name, family", [("musicgen_t5", "MusicGen"), ("audiogen_t5", "AudioGen")])
def test_one_folder_for_both_loaders(real_xps, tiny_t5_home, tmp_path, name, family):
    env = app_env(HF_HOME=str(tiny_t5_home), **OFFLINE)
    out = tmp_path / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps'][name]['sig']}", "output.transformers=true",
            "validate.duration=0.5", f"output.dir={out}", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path, env=env, check=True)
    names = {p.name for p in out.iterdir()}
    assert set(HF_FILES) <= names and {"state_dict.bin", "compression_state_dict.bin"} <= names
    manifest = json.loads((out / "export.json").read_text())
    hf = manifest["transformers"]
    assert hf["model_class"] == "MusicgenForConditionalGeneration"
    assert hf["text_encoder"] == "t5-small"
    # where the T5 was loaded from is not written (a local folder would name this machine)
    # (4.44 writes the key back, empty)
    text_config = json.loads((out / "config.json").read_text())["text_encoder"]
    assert text_config.get("_name_or_path", "") == ""
    # the proof covers what generation_config.json generates: one training segment
    proof = hf["proof"]
    generation = json.loads((out / "generation_config.json").read_text())
    frames = proof["greedy_frames"]
    delay = manifest["model"]["codebooks"] - 1  # the delay pattern's steps beyond the frames
    assert frames == proof["generation_frames"] == generation["max_new_tokens"] - delay
    assert frames == manifest["model"]["frame_rate"] * manifest["model"]["segment_duration"]
    assert proof["lm_logits_max_abs_diff_early"] <= 1e-4
    assert proof["lm_logits_max_rel_diff"] <= 1e-4
    assert 0.99 <= proof["lm_logits_argmax_agreement"] <= 1.0
    assert proof["encodec_decode_max_abs_diff"] <= 1e-4
    assert proof["encodec_encode_identical_codes"] == 1.0
    # every run agrees over the first 250 frames at least; past them a near-tie may part them
    first = proof["greedy_first_difference"]
    assert first is None or first >= 250
    assert proof["greedy_identical_frames"] >= (frames if first is None else first)
    assert proof["pipeline_sampling_rate"] == manifest["model"]["sample_rate"]
    card = (out / "README.md").read_text()
    assert "MusicgenForConditionalGeneration.from_pretrained" in card
    assert (f"over {frames} frames (the length `generation_config.json` generates)" in card
            and f"of {frames} identical frames" in card)
    proc = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(out), family],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "MusicgenProcessor"
    assert proc.stdout.strip().endswith("True True"), proc.stdout


@pytest.mark.slow  # an app process
@pytest.mark.through_app
def test_a_lut_conditioned_lm_is_refused_before_writing(refused, musicgen_ckpt, tmp_path):
    refused(tmp_path, *input_args(musicgen_ckpt), "output.transformers=true",
            message=r"cannot add transformers' format \(output\.transformers=true\): .*"
                    r"conditioner 'description' is 'lut': only T5 maps")


def test_an_encodec_both_transformers_versions_cannot_read_is_refused(refused, encodec_ckpt,
                                                                      tmp_path):
    """4 codebooks of 256 entries: 4.44 counts 10 bits per codebook, 5.x 8: no bandwidth
    gives 4 quantizers on both."""
    refused(tmp_path, *input_args(encodec_ckpt), "output.transformers=true",
            message=r"cannot add transformers' format \(output\.transformers=true\): no "
                    r"target bandwidth gives 4 quantizers of 256 entries")


ENCODEC_BOTH = """
import sys, torch, transformers
from audiocraft.models import CompressionModel
folder = sys.argv[1]
model = transformers.EncodecModel.from_pretrained(folder)
features = transformers.AutoFeatureExtractor.from_pretrained(folder)
ours = CompressionModel.get_pretrained(folder + "/compression_state_dict.bin")
codes = torch.randint(0, model.config.codebook_size, (1, 1, ours.num_codebooks, 25))
with torch.no_grad():
    diff = (model.decode(codes, [None]).audio_values - ours.decode(codes[0])).abs().max()
print(features.sampling_rate == ours.sample_rate, float(diff) <= 1e-4)
"""


def test_an_encodec_only_release_is_an_encodec_model_too(real_xps, tmp_path):
    out = tmp_path / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['encodec512']['sig']}", "output.transformers=true",
            "validate.duration=0.5", f"output.dir={out}", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path, check=True)
    hf = json.loads((out / "export.json").read_text())["transformers"]
    assert hf["model_class"] == "EncodecModel"
    assert hf["files"] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {name: stat.S_IMODE((out / name).stat().st_mode)  # safetensors' own is 0600
             for name in (*hf["files"], "compression_state_dict.bin")}
    assert set(modes.values()) == {0o644 & ~umask}, modes
    assert hf["proof"]["encodec_decode_max_abs_diff"] <= 1e-4
    assert hf["proof"]["encodec_encode_identical_codes"] == 1.0
    assert "EncodecModel.from_pretrained" in (out / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-c", ENCODEC_BOTH, str(out)], capture_output=True,
                          text=True, env=app_env(), timeout=300)
    assert proc.stdout.split() == ["True", "True"], proc.stderr[-3000:]


def test_inspect_says_whether_a_checkpoint_is_convertible(real_xps, tiny_t5_home, tmp_path):
    lines = {}
    for name in ("musicgen_t5", "musicgen", "magnet", "encodec512", "encodec"):
        proc = run_app("mode=inspect", "input=xp", f"input.dora_dir={real_xps['dora_dir']}",
                       f"input.sig={real_xps['xps'][name]['sig']}",
                       f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, check=True)
        [lines[name]] = [line for line in proc.stdout.splitlines()
                         if line.startswith("transformers ")]
    assert lines["musicgen_t5"] == "transformers yes"
    assert "conditioner 'description' is 'lut'" in lines["musicgen"]
    assert "card 400: not a power of two" in lines["musicgen"]
    assert "not MAGNeT" in lines["magnet"]
    assert lines["encodec512"] == "transformers yes (EncodecModel)"
    assert lines["encodec"] == ("transformers no: rvq.bins 400: not a power of two "
                                "(transformers' EnCodec refuses it)")


def test_an_encodec_of_400_bins_is_refused_before_writing(real_xps, refused, tmp_path):
    refused(tmp_path, "input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['encodec']['sig']}", "output.transformers=true",
            message=r"cannot add transformers' format \(output\.transformers=true\): "
                    r"rvq\.bins 400: not a power of two")


def test_a_proof_of_no_frames_is_refused_before_writing(refused, t5_lm, tmp_path):
    refused(tmp_path, *input_args(t5_lm), "output.transformers=true",
            "validate.transformers_frames=0",
            message=r"validate\.transformers_frames=0: the transformers proof needs at least 1 "
                    r"frame \(unset: the generation length\)")
