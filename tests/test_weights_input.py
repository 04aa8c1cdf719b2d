"""input=weights: weights trained outside AudioCraft's solvers, released over a base.

Every weights file here is made from a real release, as each kind of trainer makes its own:
``torch.save(model.lm.state_dict())`` (community trainers), a Lightning-shaped ``last.ckpt``,
a safetensors file, a transformers folder (``output.transformers=true``, and as
``save_pretrained`` writes it, sharded), a PEFT LoRA adapter made with ``peft`` on that folder.
Bases are the demo MusicGen (LUT-conditioned) and a T5-conditioned one in transformers' layout,
exported in this process; the T5 is the tiny one of scripts/tiny_t5.py, given as a folder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from audiocraft_ext import export_release
from audiocraft_ext.errors import ExportError
from tests.support.helpers import (
    LOAD_CHECKS,
    OFFLINE,
    app_env,
    assert_same_state,
    assert_validated,
    release_state,
    run_app,
)

TRANSFORMERS_FILES = ("config.json", "generation_config.json", "preprocessor_config.json",
                      "spiece.model", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "model.safetensors")


@pytest.fixture(scope="session")
def demo_base(musicgen_ckpt, tmp_path_factory) -> Path:
    """The demo MusicGen's release (AudioCraft's files only)."""
    out = tmp_path_factory.mktemp("bases") / "demo"
    export_release(musicgen_ckpt, out, validate="none", samples=False)
    return out


@pytest.fixture(scope="session")
def t5_snapshot(tiny_t5_home) -> Path:
    [snapshot] = (tiny_t5_home / "hub" / "models--t5-small" / "snapshots").iterdir()
    return snapshot


@pytest.fixture(scope="session")
def t5_base(t5_lm, t5_snapshot, tmp_path_factory) -> Path:
    """A T5-conditioned MusicGen's release with transformers' files beside AudioCraft's."""
    out = tmp_path_factory.mktemp("bases") / "t5"
    export_release(t5_lm, out, validate="none", samples=False, transformers=True,
                   text_encoder=str(t5_snapshot))
    return out


@pytest.fixture(scope="session")
def transformers_folder(t5_base, tmp_path_factory) -> Path:
    """The release's transformers half alone: what a transformers user holds."""
    folder = tmp_path_factory.mktemp("weights") / "musicgen-hf"
    folder.mkdir()
    for name in TRANSFORMERS_FILES:
        shutil.copy(t5_base / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def lora_adapter(transformers_folder, tmp_path_factory) -> Path:
    """A LoRA adapter over the transformers folder, made by peft (non-zero B, so that merging
    changes the weights), as a fine-tuner saves it."""
    import peft
    import transformers

    model = transformers.MusicgenForConditionalGeneration.from_pretrained(transformers_folder)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["q_proj", "v_proj", "fc1", "enc_to_dec_proj"])
    folder = tmp_path_factory.mktemp("weights") / "lora"
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


def _lm(release: Path) -> dict[str, torch.Tensor]:
    return release_state(release / "state_dict.bin")


def _manifest(release: Path) -> dict:
    return json.loads((release / "export.json").read_text())


# --- AudioCraft-named state dicts ------------------------------------------------------------
def _bare(state: dict) -> dict:
    return dict(state)


def _module(state: dict) -> dict:  # DataParallel / DDP
    return {f"module.{k}": v for k, v in state.items()}


def _lightning(state: dict) -> dict:  # a LightningModule holding the MusicGen as self.model
    return {"state_dict": {f"model.lm.{k}": v for k, v in state.items()}, "epoch": 3,
            "global_step": 120, "optimizer_states": [], "pytorch-lightning_version": "2.5.0"}


@pytest.mark.parametrize("make, suffix, wrapper, prefix", [
    (_bare, ".pt", None, None),
    (_module, ".pth", None, "module."),
    (_lightning, ".ckpt", "state_dict", "model.lm."),
    (_bare, ".safetensors", None, None),
], ids=["lm_final.pt", "ddp", "lightning", "safetensors"])
def test_a_state_dict_is_released_with_the_base_config(demo_base, tmp_path, make, suffix,
                                                       wrapper, prefix):
    base_lm = _lm(demo_base)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in make(base_lm).items()}, str(path))
    else:
        torch.save(make(base_lm), path)
    out = tmp_path / "release"
    result = export_release(path, out, base=demo_base, validate="load", samples=False)
    assert_validated(result.manifest, LOAD_CHECKS)
    assert_same_state(_lm(out), base_lm)
    assert (out / "compression_state_dict.bin").read_bytes() \
        == (demo_base / "compression_state_dict.bin").read_bytes()
    weights = _manifest(out)["source"]["weights"]
    assert (weights["kind"], weights["wrapper"], weights["prefix"]) == ("state dict", wrapper,
                                                                         prefix)
    assert (weights["base_kind"], weights["encodec"]) == ("release folder", "the base's")
    card = (out / "README.md").read_text()
    assert "trained outside AudioCraft's solvers and checked tensor by tensor" in card


def test_a_fine_tuned_state_dict_keeps_its_own_values(demo_base, tmp_path):
    state = _lm(demo_base)
    state["linears.0.weight"] = state["linears.0.weight"] + 1
    path = tmp_path / "lm_final.pt"
    torch.save(state, path)
    export_release(path, tmp_path / "release", base=demo_base, validate="load", samples=False)
    assert_same_state(_lm(tmp_path / "release"), state)


def test_a_whole_musicgen_state_brings_its_changed_encodec(demo_base, tmp_path):
    """{'model.lm.*', 'model.compression_model.*'}: the EnCodec is compared with the base's and
    released when it differs."""
    lm = _lm(demo_base)
    encodec = release_state(demo_base / "compression_state_dict.bin")
    changed = next(k for k in encodec if k.endswith("conv.conv.bias"))
    encodec[changed] = encodec[changed] + 0.5
    path = tmp_path / "musicgen.ckpt"
    torch.save({"state_dict": {**{f"model.lm.{k}": v for k, v in lm.items()},
                               **{f"model.compression_model.{k}": v for k, v in encodec.items()}}},
               path)
    out = tmp_path / "release"
    export_release(path, out, base=demo_base, validate="load", samples=False)
    assert_same_state(release_state(out / "compression_state_dict.bin"), encodec)
    assert _manifest(out)["source"]["weights"]["encodec"] == "from the weights"


def test_dtype_is_kept_or_cast(demo_base, tmp_path):
    state = {k: v.float() for k, v in _lm(demo_base).items()}
    path = tmp_path / "lm_final.pt"
    torch.save(state, path)
    export_release(path, tmp_path / "kept", base=demo_base, validate="none", samples=False)
    assert {v.dtype for v in _lm(tmp_path / "kept").values()} == {torch.float32}
    export_release(path, tmp_path / "cast", base=demo_base, validate="none", samples=False,
                   dtype="float16")
    assert_same_state(_lm(tmp_path / "cast"), _lm(demo_base))  # float16 -> float32 -> float16


# --- transformers' MusicGen and the round trip ------------------------------------------------
def test_round_trip_through_transformers_is_bit_identical(t5_base, transformers_folder,
                                                          tmp_path):
    """AudioCraft release -> transformers folder -> input=weights -> AudioCraft release: the
    same tensors, bit for bit, once cast back to the release's float16 (transformers' files
    are float32: values equal, dtype kept unless output.dtype says otherwise)."""
    out = tmp_path / "release"
    export_release(transformers_folder, out, base=t5_base, validate="none", samples=False,
                   dtype="float16")
    assert_same_state(_lm(out), _lm(t5_base))
    assert (out / "compression_state_dict.bin").read_bytes() \
        == (t5_base / "compression_state_dict.bin").read_bytes()
    weights = _manifest(out)["source"]["weights"]
    assert weights["kind"] == "transformers"
    assert weights["text_encoder"] == "equal to the base's"
    kept = tmp_path / "kept"
    export_release(transformers_folder, kept, base=t5_base, validate="none", samples=False)
    assert_same_state(_lm(kept), {k: v.float() for k, v in _lm(t5_base).items()})


def test_a_folder_saved_by_save_pretrained_sharded_maps_too(t5_base, transformers_folder,
                                                            tmp_path):
    """What a fine-tuner's folder is: transformers' own save_pretrained (tied T5 embedding
    written once; 5.x may name weight norm as parametrizations), in shards with an index."""
    import transformers

    model = transformers.MusicgenForConditionalGeneration.from_pretrained(transformers_folder)
    saved = tmp_path / "saved"
    model.save_pretrained(saved, max_shard_size="2MB")
    assert (saved / "model.safetensors.index.json").is_file()
    out = tmp_path / "release"
    export_release(saved, out, base=t5_base, validate="none", samples=False, dtype="float16")
    assert_same_state(_lm(out), _lm(t5_base))


def test_a_transformers_folder_with_a_fine_tuned_encodec(t5_base, transformers_folder,
                                                         tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(transformers_folder, folder)
    state = load_file(str(folder / "model.safetensors"))
    changed = next(k for k in state if k.startswith("audio_encoder.decoder.")
                   and k.endswith(".conv.bias"))
    state[changed] = state[changed] + 0.25
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "release"
    export_release(folder, out, base=t5_base, validate="none", samples=False)
    base_encodec = release_state(t5_base / "compression_state_dict.bin")
    released = release_state(out / "compression_state_dict.bin")
    differs = [k for k in base_encodec if not torch.equal(base_encodec[k], released[k])]
    assert len(differs) == 1 and torch.equal(released[differs[0]], state[changed])
    assert _manifest(out)["source"]["weights"]["encodec"] == "from the weights"


def test_a_transformers_state_dict_file_of_the_decoder_alone(t5_base, transformers_folder,
                                                             tmp_path):
    """torch.save(model.decoder.state_dict()): MusicgenForCausalLM's names, no text encoder
    projection (enc_to_dec_proj lives in the full model) -> its projection is missing."""
    state = load_file(str(transformers_folder / "model.safetensors"))
    decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    path = tmp_path / "decoder.pt"
    torch.save(decoder, path)
    with pytest.raises(ExportError, match=r"does not fit the base .*: 2 missing "
                       r"\('condition_provider\.conditioners\.description\.output_proj\."):
        export_release(path, tmp_path / "release", base=t5_base, validate="none")
    assert not (tmp_path / "release").exists()


def test_a_transformers_model_of_another_layout_is_refused(refused, t5_base, transformers_folder,
                                                           tmp_path):
    """Same tensor shapes, another model: config.json says stereo, the base is mono."""
    folder = tmp_path / "hf"
    shutil.copytree(transformers_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["audio_channels"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    refused(tmp_path, *_args(folder, t5_base), message=re.escape(
        f"{folder}/config.json says audio_channels=2 but the base {t5_base} is "
        "audio_channels=1: another model than the base's") + "$")


def test_a_chosen_compression_model_is_used(t5_base, transformers_folder, tmp_path):
    """compression.path= with transformers weights: the chosen file ships, not the base's."""
    from audiocraft_ext.config import CheckpointCompression

    out = tmp_path / "release"
    export_release(transformers_folder, out, base=t5_base, validate="none", samples=False,
                   compression=CheckpointCompression(path=str(t5_base /
                                                          "compression_state_dict.bin")))
    assert (out / "compression_state_dict.bin").read_bytes() \
        == (t5_base / "compression_state_dict.bin").read_bytes()
    assert _manifest(out)["compression"]["reference"].endswith("compression_state_dict.bin")


# --- PEFT LoRA --------------------------------------------------------------------------------
def test_a_lora_adapter_is_merged_with_peft(t5_base, t5_lm, t5_snapshot, lora_adapter,
                                            transformers_folder, tmp_path):
    """Merged into the base's transformers model (its own files, or written from a training
    checkpoint base): the same release either way, equal to peft's own merge."""
    import peft
    import transformers

    out = tmp_path / "release"
    export_release(lora_adapter, out, base=t5_base, validate="none", samples=False)
    from_xp = tmp_path / "from_xp"
    export_release(lora_adapter, from_xp, base=t5_lm, validate="none", samples=False,
                   text_encoder=str(t5_snapshot))
    released = _lm(out)
    assert_same_state(_lm(from_xp), released)
    base = _lm(t5_base)
    assert {v.dtype for v in released.values()} == {v.dtype for v in base.values()}
    model = transformers.MusicgenForConditionalGeneration.from_pretrained(transformers_folder)
    merged = peft.PeftModel.from_pretrained(model, str(lora_adapter)).merge_and_unload()
    q = merged.decoder.model.decoder.layers[1].self_attn.q_proj.weight.detach()
    packed = "transformer.layers.1.self_attn.mha.in_proj_weight"
    assert torch.equal(released[packed][:q.shape[0]], q.to(base[packed].dtype))
    assert not torch.equal(released[packed], base[packed])
    fc1 = merged.decoder.model.decoder.layers[0].fc1.weight.detach()
    assert torch.equal(released["transformer.layers.0.linear1.weight"], fc1.to(torch.float16))
    weights = _manifest(out)["source"]["weights"]
    assert weights["kind"] == "peft adapter"
    assert weights["adapter"]["r"] == 4 and weights["adapter"]["peft_type"] == "LORA"
    assert str(transformers_folder) not in json.dumps(weights)  # the trainer's path
    assert "merged into the base's transformers model with peft" in (out / "README.md").read_text()


def test_a_zero_lora_adapter_is_refused(transformers_folder, t5_base, tmp_path):
    import peft
    import transformers

    model = transformers.MusicgenForConditionalGeneration.from_pretrained(transformers_folder)
    folder = tmp_path / "zero"
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        folder)  # peft's default init: B = 0, the merge changes nothing
    with pytest.raises(ExportError, match="changes no weight of the base's LM"):
        export_release(folder, tmp_path / "release", base=t5_base, validate="none")


def test_an_adapter_over_a_base_transformers_cannot_represent(refused, lora_adapter, demo_base,
                                                             tmp_path):
    refused(tmp_path, *_args(lora_adapter, demo_base), message=re.escape(
        f"{lora_adapter} holds transformers' weights, which map only onto a base transformers' "
        f"Musicgen represents; the base {demo_base} is not one: conditioner 'description' is "
        "'lut': only T5 maps"))


def test_an_adapter_for_another_size_is_refused(refused, lora_adapter, t5_lm_xp, t5_snapshot,
                                                tmp_path):
    """The adapter was made over a width-32 MusicGen; this base is 64 wide."""
    wide = tmp_path / "wide"
    export_release(t5_lm_xp("transformer_lm.dim=64"), wide, validate="none", samples=False,
                   transformers=True, text_encoder=str(t5_snapshot))
    refused(tmp_path, *_args(lora_adapter, wide), message=re.escape(
        f"peft cannot merge the adapter {lora_adapter} into the base's transformers model: ")
        + r"size mismatch for .*: copying a param with shape .*, the shape in current model is")


def test_without_peft_the_adapter_is_one_line(lora_adapter, t5_base, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what `import peft` does when not installed
    with pytest.raises(ExportError, match=r"merging it needs peft, which is not installed "
                       r"\(pip install 'audiocraft-ext\[lora\]'"):
        export_release(lora_adapter, tmp_path / "release", base=t5_base, validate="none")


@pytest.mark.slow  # an app process, full validation and transformers' proof
def test_lora_through_the_app_with_transformers_and_full_validation(
        t5_base, lora_adapter, tiny_t5_home, tmp_path):
    env = app_env(HF_HOME=str(tiny_t5_home), **OFFLINE)
    out = tmp_path / "release"
    run_app("input=weights", f"input.path={lora_adapter}", f"input.base={t5_base}",
            "output.transformers=true", "validate.transformers_frames=20",
            "validate.duration=0.5", f"output.dir={out}",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, check=True)
    manifest = _manifest(out)
    assert [c["check"] for c in manifest["validation"]["checks"] if c["ok"]] == [
        "lm_file", "compression_file", "get_pretrained", "generate"]
    proof = manifest["transformers"]["proof"]
    assert proof["lm_logits_max_abs_diff"] <= 1e-4
    assert proof["greedy_identical_frames"] == proof["greedy_frames"]
    assert manifest["source"]["weights"]["kind"] == "peft adapter"


# --- a Hub name through the Hugging Face cache ------------------------------------------------
def _hub_cache(home: Path, repo: str, files: dict[str, Path]) -> None:
    """The Hugging Face cache's layout: a snapshot of links into blobs/, as the hub writes
    it (`huggingface-cli download`)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, source in files.items():
        blob = root / "blobs" / f"blob-{name}"
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("a" * 40)


@pytest.mark.slow  # an app process (the cache location is read when huggingface_hub starts)
def test_a_hub_name_is_read_from_the_cache_only(t5_base, transformers_folder, tmp_path,
                                                network_attempts):
    """A Hub base as the cache holds it (links into blobs/), with transformers' files too:
    transformers weights over it, their T5 compared with the base's through the links."""
    home = tmp_path / "hf"
    _hub_cache(home, "someone/musicgen-tiny", {
        name: t5_base / name for name in ("state_dict.bin", "compression_state_dict.bin",
                                          "config.json", "model.safetensors")})
    env = app_env(HF_HOME=str(home), **OFFLINE)
    out = tmp_path / "release"
    common = ("input=weights", f"input.path={transformers_folder}", "validate=none",
              "output.dtype=float16", f"hydra.run.dir={tmp_path / 'run'}")
    run_app(*common, "input.base=someone/musicgen-tiny", f"output.dir={out}", cwd=tmp_path,
            env=env, check=True)
    weights = _manifest(out)["source"]["weights"]
    assert (weights["base_kind"], weights["text_encoder"]) == ("Hugging Face cache",
                                                               "equal to the base's")
    assert_same_state(_lm(out), _lm(t5_base))
    proc = run_app(*common, "input.base=someone/not-cached", f"output.dir={tmp_path / 'x'}",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "input.base=someone/not-cached is no local folder and not in the Hugging Face " \
           "cache (HF_HOME) as a Hub name: nothing is downloaded" in proc.stderr
    assert network_attempts == []


# --- refusals: one line, nothing written ------------------------------------------------------
def _args(path: Path, base: Path | str | None) -> tuple[str, ...]:
    return ("input=weights", f"input.path={path}", *((f"input.base={base}",) if base else ()))


@pytest.mark.through_app
def test_weights_of_another_size_are_refused(refused, demo_base, t5_base, tmp_path):
    path = tmp_path / "lm_final.pt"
    torch.save(_lm(demo_base), path)
    refused(tmp_path, *_args(path, t5_base), message=re.escape(
        f"{path} does not fit the base {t5_base} (36 tensors): 1 unexpected "
        "('condition_provider.conditioners.description.embed.weight'); 9 of another shape (")
        + r".*emb\.0\.weight \[257, 32\] \(the base's \[513, 32\]\).* and 7 more\); a model of "
        r"another size than the base$")


def test_missing_and_renamed_tensors_are_named(refused, demo_base, tmp_path):
    state = _lm(demo_base)
    state["linears.9.weight"] = state.pop("linears.3.weight")
    del state["out_norm.bias"]
    path = tmp_path / "lm_final.pt"
    torch.save(state, path)
    refused(tmp_path, *_args(path, demo_base), message=re.escape(
        f"{path} does not fit the base {demo_base} (37 tensors): 2 missing ('out_norm.bias', "
        "'linears.3.weight'); 1 unexpected ('linears.9.weight')") + "$")


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"is truncated or damaged"),
    ("safetensors", r"weights\.safetensors is not a readable safetensors file"),
    ("empty", r"holds no tensors"),
    ("not tensors", r"holds no \{name: tensor\} state dict, at its top level or one level down "
                    r"\(its keys: 'epoch', 'note'\)"),
], ids=["truncated", "bad-safetensors", "empty", "no-state"])
def test_a_damaged_weights_file_is_refused(refused, demo_base, tmp_path, damage, message):
    if damage == "truncate":
        path = tmp_path / "lm_final.pt"
        torch.save(_lm(demo_base), path)
        path.write_bytes(path.read_bytes()[:50_000])
    elif damage == "safetensors":
        path = tmp_path / "weights.safetensors"
        path.write_bytes(b"\xff" * 64)
    elif damage == "empty":
        path = tmp_path / "lm_final.pt"
        torch.save({}, path)
    else:
        path = tmp_path / "lm_final.pt"
        torch.save({"epoch": 3, "note": "x"}, path)
    refused(tmp_path, *_args(path, demo_base), message=message)


def test_a_pickle_that_runs_code_is_refused(refused, demo_base, tmp_path):
    path = tmp_path / "lm_final.pt"
    torch.save({"w": torch.zeros(2), "x": shutil.rmtree}, path)
    refused(tmp_path, *_args(path, demo_base), message=r"shutil\.rmtree, which is not allowed")


@pytest.mark.parametrize("base, message", [
    (None, r"^no base given for the weights: set input=weights input\.base=\.\.\., an "
           r"AudioCraft release folder"),
    ("nobody/nothing", r"input\.base=nobody/nothing is no local folder and not in the Hugging "
                       r"Face cache"),
    ("encodec", r"is a 'compression' model, not an LM"),
], ids=["none", "uncached", "encodec"])
def test_a_base_that_gives_no_lm_is_refused(refused, demo_base, encodec_ckpt, tmp_path, base,
                                            message):
    path = tmp_path / "lm_final.pt"
    torch.save(_lm(demo_base), path)
    refused(tmp_path, *_args(path, encodec_ckpt if base == "encodec" else base),
            message=message)


def test_a_training_checkpoint_as_weights_is_redirected(refused, musicgen_ckpt, demo_base,
                                                        tmp_path):
    refused(tmp_path, *_args(musicgen_ckpt, demo_base), message=re.escape(
        f"{musicgen_ckpt} is an AudioCraft training checkpoint (it has its xp.cfg): export it "
        f"with input=checkpoint input.path={musicgen_ckpt}") + "$")


def test_a_changed_text_encoder_is_refused(refused, t5_base, transformers_folder, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(transformers_folder, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["text_encoder.shared.weight"] = state["text_encoder.shared.weight"] * 2
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    refused(tmp_path, *_args(folder, t5_base), message=re.escape(
        f"{folder}: its text encoder (T5) differs from the base's: AudioCraft's MusicGen uses a "
        "frozen T5 and cannot hold a fine-tuned one") + "$")


def test_the_base_is_never_overwritten(refused, demo_base, tmp_path):
    path = tmp_path / "lm_final.pt"
    torch.save(_lm(demo_base), path)
    before = (demo_base / "state_dict.bin").read_bytes()
    refused(tmp_path, *_args(path, demo_base), "output.overwrite=true", dest=demo_base,
            message=re.escape(f"{demo_base} is {demo_base}, which holds the weights being "
                              "exported or their base; a release is never written there"))
    assert (demo_base / "state_dict.bin").read_bytes() == before


def test_state_choices_do_not_apply(refused, demo_base, tmp_path):
    path = tmp_path / "lm_final.pt"
    torch.save(_lm(demo_base), path)
    refused(tmp_path, *_args(path, demo_base), "state=ema", message=re.escape(
        "state=ema picks a state of a training checkpoint; input=weights releases the weights "
        "as given") + "$")


# --- mode=inspect ----------------------------------------------------------------------------
def test_inspect_says_what_the_weights_are_and_which_base_they_need(job_config, demo_base,
                                                                     t5_base, tmp_path, capsys):
    from audiocraft_ext.app.job import run

    path = tmp_path / "last.ckpt"
    torch.save(_lightning(_lm(demo_base)), path)
    run(job_config("mode=inspect", *_args(path, None)))
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["kind"] == "state dict (under 'state_dict'): 37 tensors, 100,448 parameters"
    assert lines["layout"] == ("AudioCraft names prefixed 'model.lm.'; 4 codebooks of 256, "
                               "width 32, 2 layers")
    assert lines["needs"].endswith("of an LM with 4 codebooks of 256 entries, width 32 and 2 "
                                   "layers")
    assert lines["fits"] == "unknown: no input.base given"
    run(job_config("mode=inspect", *_args(path, demo_base)))
    assert "fits         yes: every tensor fits the base's; EnCodec the base's" \
        in capsys.readouterr().out
    run(job_config("mode=inspect", *_args(path, t5_base)))
    assert re.search(r"fits         no: .* does not fit the base", capsys.readouterr().out)


# --- from a real XP trained by AudioCraft's own solver ------------------------------------------
# What each kind of trainer saves, made from the release of the real musicgen_t5 XP, in a fresh
# process that loads it as a user does (the T5 by name, from the tiny T5's cache).
MAKE_WEIGHTS = """
import shutil, sys, torch, peft, transformers
from pathlib import Path
from audiocraft.models import MusicGen
base, out = Path(sys.argv[1]), Path(sys.argv[2])
lm = MusicGen.get_pretrained(str(base), device="cpu").lm
torch.save(lm.state_dict(), out / "lm_final.pt")  # community trainers
torch.save({"state_dict": {f"model.lm.{k}": v for k, v in lm.state_dict().items()},
            "epoch": 1}, out / "last.ckpt")  # Lightning
hf = transformers.MusicgenForConditionalGeneration.from_pretrained(base)
hf.save_pretrained(out / "musicgen-hf")  # transformers fine-tuners
for name in ("preprocessor_config.json", "spiece.model", "tokenizer.json",
             "tokenizer_config.json"):
    shutil.copy(base / name, out / "musicgen-hf" / name)
torch.manual_seed(0)
lora = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                       target_modules=["q_proj", "v_proj", "fc1"])
peft.get_peft_model(hf, lora).save_pretrained(out / "lora")  # PEFT LoRA
"""


def test_each_kind_from_a_real_xp_release(real_xps, tiny_t5_home, tmp_path):
    env = app_env(HF_HOME=str(tiny_t5_home), **OFFLINE)
    base = tmp_path / "base"
    common = (f"hydra.run.dir={tmp_path / 'run'}", "validate.duration=0.5",
              "validate.transformers_frames=20")
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_t5']['sig']}", "output.transformers=true",
            f"output.dir={base}", *common, cwd=tmp_path, env=env, check=True)
    made = tmp_path / "weights"
    made.mkdir()
    proc = subprocess.run([sys.executable, "-c", MAKE_WEIGHTS, str(base), str(made)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base_lm = _lm(base)
    for name, kind in (("lm_final.pt", "state dict"), ("last.ckpt", "state dict"),
                       ("musicgen-hf", "transformers"), ("lora", "peft adapter")):
        out = tmp_path / f"release-{name}"
        run_app("input=weights", f"input.path={made / name}", f"input.base={base}",
                "output.transformers=true", f"output.dir={out}", *common, cwd=tmp_path,
                env=env, check=True)
        manifest = _manifest(out)
        assert_validated(manifest, ["lm_file", "compression_file", "get_pretrained",
                                    "generate"])
        assert manifest["source"]["weights"]["kind"] == kind
        proof = manifest["transformers"]["proof"]
        assert proof["greedy_identical_frames"] == proof["greedy_frames"] > 0
        released = _lm(out)
        if kind == "peft adapter":
            assert not torch.equal(released["transformer.layers.0.linear1.weight"],
                                   base_lm["transformer.layers.0.linear1.weight"])
            assert {v.dtype for v in released.values()} == {v.dtype for v in base_lm.values()}
        else:  # the base's own values (transformers' files are float32)
            assert_same_state({k: v.to(base_lm[k].dtype) for k, v in released.items()},
                              base_lm)
        assert (out / "compression_state_dict.bin").read_bytes() \
            == (base / "compression_state_dict.bin").read_bytes()
