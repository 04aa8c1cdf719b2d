"""MusicGen-melody (AudioCraft's chroma2music: a ChromaStemConditioner on the melody, whose
stems demucs' htdemucs separates, prepended with T5 text): validation generates with a melody
prompt as well as text; what is missing (demucs, its weights) is said in one line with what
still works.

The slow cases use a melody XP trained by AudioCraft's own solver (scripts/train_fixtures.py),
with the tiny T5 (HF_HOME) and the tiny htdemucs (TORCH_HOME, scripts/tiny_demucs.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from omegaconf import OmegaConf, open_dict

from tests.support.app_cases import checkpoint_copy, input_args
from tests.support.helpers import FULL_CHECKS, OFFLINE, app_env, assert_validated, run_app

CHROMA = {"model": "chroma_stem",
          "chroma_stem": {"sample_rate": 32000, "n_chroma": 12, "radix2_exp": 14, "argmax": True,
                          "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100,
                          "cache_path": None}}


def _with_melody_conditioner(pkg: dict) -> None:
    """xp.cfg declares a melody conditioner (what a MusicGen-melody's does), the state is the
    demo's: enough for everything that happens before the LM's weights are loaded."""
    with open_dict(pkg["xp.cfg"]):
        pkg["xp.cfg"].conditioners.self_wav = OmegaConf.create(CHROMA)


def test_without_demucs_validation_is_refused_before_writing(refused, musicgen_ckpt, tmp_path,
                                                             monkeypatch):
    path = checkpoint_copy(tmp_path / "src", musicgen_ckpt, _with_melody_conditioner)
    monkeypatch.setitem(sys.modules, "demucs", None)  # what `import demucs` does when absent
    refused(tmp_path, *input_args(path), "validate=load", message=re.escape(
        "validation builds this MusicGen-melody, and its melody conditioner ('self_wav': "
        "chroma_stem) separates the melody with demucs, which is not installed here: pip "
        "install 'audiocraft-ext[melody]' (demucs 4.0.1), or use validate=none, the one level "
        "that does not build the model") + "$")


def test_without_htdemucs_weights_offline_it_is_one_line(refused, musicgen_ckpt, tmp_path,
                                                          network_attempts):
    path = checkpoint_copy(tmp_path / "src", musicgen_ckpt, _with_melody_conditioner)
    empty = tmp_path / "torch_home"
    refused(tmp_path, *input_args(path), "validate=load", setenv={"TORCH_HOME": str(empty)},
            message=re.escape(
                "validation cannot build the LM: its melody conditioner (chroma_stem) needs "
                "demucs' htdemucs weights, which torch.hub found neither in its cache "
                f"({empty}/hub/checkpoints, under TORCH_HOME) nor could download (URLError); "
                "they come from dl.fbaipublicfiles.com on first use: run where it is reachable "
                "or put the file in that cache, or use validate=none") + ", the one level")
    assert network_attempts  # the download was tried, and refused by the test's guard


def test_validate_none_exports_it_without_demucs(musicgen_ckpt, tmp_path, monkeypatch):
    from audiocraft_ext import export_release

    path = checkpoint_copy(tmp_path / "src", musicgen_ckpt, _with_melody_conditioner)
    monkeypatch.setitem(sys.modules, "demucs", None)
    export_release(path, tmp_path / "release", validate="none")
    assert (tmp_path / "release" / "state_dict.bin").is_file()


# The card's snippet as a user runs it: from the folder holding the release.
RUN_SNIPPET = """
import re, sys
card = open(sys.argv[1]).read()
[snippet] = re.findall(r"^```python\\n(.*?)^```$", card, re.M | re.S)[:1]
namespace = {}
exec(compile(snippet, "README.md", "exec"), namespace)
print(tuple(namespace["wav"].shape[:2]))
"""


def test_a_real_melody_xp_is_validated_with_a_melody(real_xps, tiny_t5_home, tiny_demucs_home,
                                                     tmp_path):
    env = app_env(HF_HOME=str(tiny_t5_home), TORCH_HOME=str(tiny_demucs_home), **OFFLINE)
    out = tmp_path / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_melody']['sig']}", "validate.duration=0.5",
            f"output.dir={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env,
            check=True)
    manifest = json.loads((out / "export.json").read_text())
    assert_validated(manifest, FULL_CHECKS)
    generate = manifest["validation"]["checks"][-1]
    assert sorted(generate["shapes"]) == ["melody", "text", "unconditional"]
    assert [s["name"] for s in manifest["samples"]] == ["melody_prompt", "unconditional",
                                                        "text", "melody"]
    card = (out / "README.md").read_text()
    assert "model.generate_with_chroma([" in card
    assert "with the melody of **melody_prompt**" in card
    proc = subprocess.run([sys.executable, "-c", RUN_SNIPPET, str(out / "README.md")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 1)"


# A user of the folder with transformers, offline: the processor computes the chroma of a
# melody given as audio (transformers runs no demucs); generation in both libraries.
LOAD_BOTH = """
import sys, torch, transformers, audiocraft.models
folder = sys.argv[1]
model = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(folder)
processor = transformers.AutoProcessor.from_pretrained(folder)
sr = processor.feature_extractor.sampling_rate
t = torch.arange(sr) / sr
melody = 0.5 * torch.sin(2 * torch.pi * 440.0 * t)
inputs = processor(text=["a test"], audio=melody[None], sampling_rate=sr, return_tensors="pt")
audio = model.generate(**inputs, do_sample=False, max_new_tokens=12)
ours = audiocraft.models.MusicGen.get_pretrained(folder, device="cpu")
ours.set_generation_params(duration=0.2)
wav = ours.generate_with_chroma(["a test"], melody[None, None], sr)
print(type(processor).__name__, tuple(audio.shape[:2]), tuple(wav.shape[:2]))
"""


def test_a_real_melody_xp_in_transformers_format(real_xps, tiny_t5_home, tiny_demucs_home,
                                                 tmp_path):
    """MusicgenMelodyForConditionalGeneration, proven through both stacks' own conditioning
    (transformers given the stems AudioCraft's conditioner separated), and back to the same
    weights through input=weights."""
    from audiocraft_ext import export_release
    from tests.support.helpers import assert_same_state, release_state

    env = app_env(HF_HOME=str(tiny_t5_home), TORCH_HOME=str(tiny_demucs_home), **OFFLINE)
    out = tmp_path / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_melody']['sig']}", "validate.duration=0.5",
            "output.transformers=true", "validate.transformers_frames=20", f"output.dir={out}",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, check=True)
    manifest = json.loads((out / "export.json").read_text())
    hf = manifest["transformers"]
    assert hf["model_class"] == "MusicgenMelodyForConditionalGeneration"
    proof = hf["proof"]
    assert proof["lm_logits_max_abs_diff"] <= 1e-4
    assert proof["chroma_identical_frames"] == proof["chroma_frames"] > 0
    frames = proof["greedy_frames"]
    for run in ("", "_no_guidance", "_other_text", "_other_melody"):
        assert proof[f"greedy_identical_frames{run}"] == frames > 0, run
    assert proof["other_text_changes_codes"] is True
    assert proof["other_melody_changes_codes"] is True
    config = json.loads((out / "preprocessor_config.json").read_text())
    assert (config["processor_class"], config["n_fft"], config["hop_length"]) == (
        "MusicgenMelodyProcessor", 16384, 4096)
    assert json.loads((out / "config.json").read_text())["chroma_length"] == 235  # 30 s
    proc = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "MusicgenMelodyProcessor (1, 1) (1, 1)"
    # transformers' half alone, back over the release: the same weights
    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((out / name).read_bytes())
    back = tmp_path / "back"
    export_release(folder, back, base=out, validate="none", samples=False)
    lm = release_state(out / "state_dict.bin")
    assert_same_state({k: v.to(lm[k].dtype) for k, v in release_state(
        back / "state_dict.bin").items()}, lm)
    # a LoRA adapter made by peft over the melody model, merged into it
    import peft
    import torch
    import transformers

    model = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(out)
    torch.manual_seed(0)
    adapter = tmp_path / "lora"
    peft.get_peft_model(model, peft.LoraConfig(
        r=2, init_lora_weights=False, target_modules=["q_proj", "audio_enc_to_dec_proj"],
    )).save_pretrained(adapter)
    merged = tmp_path / "merged"
    export_release(adapter, merged, base=out, validate="none", samples=False)
    released = release_state(merged / "state_dict.bin")
    changed = [k for k in lm if not torch.equal(released[k], lm[k])]
    assert "condition_provider.conditioners.self_wav.output_proj.weight" in changed
    assert "transformer.layers.0.self_attn.in_proj_weight" in changed
    assert "out_norm.weight" not in changed


def _melody_layout(argmax: bool):
    def edit(pkg: dict) -> None:
        _with_melody_conditioner(pkg)
        with open_dict(pkg["xp.cfg"]):
            cfg = pkg["xp.cfg"]
            cfg.conditioners.self_wav.chroma_stem.argmax = argmax
            cfg.conditioners.description = OmegaConf.create(
                {"model": "t5", "t5": {"name": "t5-small", "finetune": False,
                                      "word_dropout": 0.0, "normalize_text": False}})
            cfg.fuser.prepend, cfg.fuser.cross = ["self_wav", "description"], []
    return edit


def test_a_melody_layout_transformers_cannot_hold_is_refused(refused, musicgen_ckpt, tmp_path):
    path = checkpoint_copy(tmp_path / "src", musicgen_ckpt, _melody_layout(argmax=False))
    refused(tmp_path, *input_args(path), "output.transformers=true",
            message=r"cannot add transformers' format \(output\.transformers=true\): .*"
                    r"conditioners\.self_wav\.chroma_stem\.argmax is not true: transformers' "
                    r"feature extractor keeps the strongest chroma bin")
