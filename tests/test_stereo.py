"""Stereo MusicGen (AudioCraft's interleave_stereo_codebooks: the LM's codebooks alternate
between the left and right channels, each coded by a mono EnCodec) and what stock
get_pretrained can load.

Fast cases use a demo stereo XP (built by audiocraft's builders, LUT text); the slow case is a
stereo XP trained by AudioCraft's own solver on a 2-channel data set (scripts/train_fixtures.py),
T5-conditioned so that transformers' format holds it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from audiocraft_ext import ValidateConfig, export_release
from audiocraft_ext.app.job import run
from tests.support.helpers import FULL_CHECKS, OFFLINE, app_env, assert_validated, run_app

STEREO = ["channels=2", "transformer_lm.n_q=8", "codebooks_pattern.delay.delays=[0,0,1,1,2,2,3,3]",
          "+interleave_stereo_codebooks={use:true,per_timestep:false}"]


def test_a_stereo_release_validates_and_generates_two_channels(musicgen_xp, tmp_path):
    """validate=full: get_pretrained wraps the mono EnCodec for stereo; the comparison looks
    inside the wrapper, generation gives 2 channels, the samples and the card say stereo."""
    out = tmp_path / "stereo"
    result = export_release(musicgen_xp(*STEREO), out, validate=ValidateConfig(duration=0.5))
    assert_validated(result.manifest, FULL_CHECKS)
    get_pretrained = next(c for c in result.manifest.validation.checks
                          if c.check == "generate")
    assert {tuple(shape) for shape in get_pretrained.shapes.values()} \
        == {(1, 2, int(result.manifest.model.sample_rate * get_pretrained.duration))}
    manifest = json.loads((out / "export.json").read_text())
    assert {s["channels"] for s in manifest["samples"]} == {2}
    assert manifest["model"]["interleaved_stereo"] is True
    card = (out / "README.md").read_text()
    assert ("2 channel(s): stereo, its 8 codebooks alternating between the left and right "
            "channels (4 each") in card


def _inspected(job_config, capsys, path) -> dict[str, str]:
    run(job_config("mode=inspect", "input=checkpoint", f"input.path={path}"))
    pairs = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()
             if not line.startswith(" ")]
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def test_inspect_says_whether_get_pretrained_loads_it(job_config, capsys, musicgen_xp,
                                                      musicgen_ckpt):
    assert _inspected(job_config, capsys, musicgen_ckpt)["get_pretrained"] \
        == "yes (MusicGen.get_pretrained)"
    short = _inspected(job_config, capsys, musicgen_xp("dataset.segment_duration=5"))
    assert short["get_pretrained"].startswith(
        "no: stock MusicGen.get_pretrained cannot load this model: it was trained on "
        "dataset.segment_duration=5 s and asserts that its 18 s extend_stride is shorter; "
        "load the release with MusicGen(name, loaders.load_compression_model(folder), ")


# A user of the folder, offline, in a fresh process: both loaders, then generation in both.
LOAD_BOTH = """
import sys, torch, transformers, audiocraft.models
folder = sys.argv[1]
model = transformers.MusicgenForConditionalGeneration.from_pretrained(folder)
processor = transformers.AutoProcessor.from_pretrained(folder)
inputs = processor(text=["a test"], return_tensors="pt")
audio = model.generate(**inputs, do_sample=False, max_new_tokens=12)
ours = audiocraft.models.MusicGen.get_pretrained(folder, device="cpu")
ours.set_generation_params(duration=0.2)
wav = ours.generate(["a test"])
print(tuple(audio.shape[:2]), tuple(wav.shape[:2]),
      processor.feature_extractor.feature_size)
"""


def test_a_real_stereo_xp_in_both_formats(real_xps, tiny_t5_home, tmp_path):
    env = app_env(HF_HOME=str(tiny_t5_home), **OFFLINE)
    out = tmp_path / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_stereo']['sig']}",
            "output.transformers=true", "validate.transformers_frames=20", "validate.duration=0.5",
            f"output.dir={out}",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, check=True)
    manifest = json.loads((out / "export.json").read_text())
    assert_validated(manifest, FULL_CHECKS)
    config = json.loads((out / "config.json").read_text())
    assert (config["decoder"]["audio_channels"], config["decoder"]["num_codebooks"],
            config["audio_encoder"]["audio_channels"]) == (2, 8, 1)
    proof = manifest["transformers"]["proof"]
    assert proof["lm_logits_max_abs_diff"] <= 1e-4
    frames = proof["greedy_frames"]
    assert proof["greedy_identical_frames"] == proof["greedy_identical_frames_no_guidance"] \
        == proof["greedy_identical_frames_other_text"] == frames > 0
    assert proof["other_text_changes_codes"] is True
    assert {s["channels"] for s in manifest["samples"]} == {2}
    proc = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "(1, 2) (1, 2) 2"


def test_stereo_interleaved_per_time_step_is_refused_for_transformers(refused, musicgen_xp,
                                                                      tmp_path):
    xp = musicgen_xp(*STEREO[:-1], "+interleave_stereo_codebooks={use:true,per_timestep:true}")
    refused(tmp_path, "input=checkpoint", f"input.path={xp}", "output.transformers=true",
            message=r"interleave_stereo_codebooks\.per_timestep: transformers interleaves the "
                    r"channels' codebooks, not their time steps")
