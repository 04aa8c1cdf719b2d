"""The tiny T5 of the tests (scripts/tiny_t5.py) is a real `t5-small` that transformers and
audiocraft load by name, offline, from a Hugging Face cache folder; and the T5-conditioned,
delay-pattern XPs trained on it (scripts/train_fixtures.py) export and validate offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import (
    FULL_CHECKS,
    OFFLINE,
    ROOT,
    app_env,
    assert_same_state,
    assert_validated,
    release_state,
    run_app,
    torch_load,
)

SNAPSHOT_FILES = ["config.json", "model.safetensors", "special_tokens_map.json", "spiece.model",
                  "tokenizer.json", "tokenizer_config.json"]

# Run in a fresh process (transformers reads HF_HOME when imported): refuse and record every
# connection and name lookup, as conftest's network_attempts does in-process, then run BODY,
# which sets `result`; print {"result": ..., "attempts": [...]}.
GUARDED = """
import json, socket
attempts = []
connect = socket.socket.connect
def guarded(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        attempts.append(repr(address))
        raise OSError("network disabled by the test")
    return connect(sock, address)
def no_lookup(host, *args, **kwargs):
    attempts.append(repr(host))
    raise socket.gaierror("network disabled by the test")
socket.socket.connect = guarded
socket.getaddrinfo = no_lookup
{body}
print(json.dumps({{"result": result, "attempts": attempts}}))
"""

TRANSFORMERS_BODY = """
import glob, os
import sentencepiece as spm
import torch
import transformers
from transformers import T5EncoderModel, T5Tokenizer
tok = T5Tokenizer.from_pretrained("t5-small")
model = T5EncoderModel.from_pretrained("t5-small")
snap = glob.glob(os.environ["HF_HOME"] + "/hub/models--t5-small/snapshots/*/spiece.model")[0]
sp = spm.SentencePieceProcessor(model_file=snap)
text = "calm ambient song with piano at 90 bpm"
batch = tok([text, "a dog barking"], return_tensors="pt", padding=True)
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
result = {"version": transformers.__version__, "vocab": len(tok),
          "ids": tok(text).input_ids, "spm_ids": sp.encode(text) + [tok.eos_token_id],
          "extra_id_0": tok.convert_tokens_to_ids("<extra_id_0>"),
          "shape": list(hidden.shape), "finite": bool(torch.isfinite(hidden).all()),
          "d_model": model.config.d_model}
"""

AUDIOCRAFT_BODY = """
import torch
from audiocraft.modules.conditioners import T5Conditioner
cond = T5Conditioner(name="t5-small", output_dim=16, finetune=False, device="cpu")
with torch.no_grad():
    emb, mask = cond(cond.tokenize(["warm lo-fi piano with soft drums", None]))
result = {"shape": list(emb.shape), "mask_rows": mask.sum(dim=1).tolist(),
          "t5_width": cond.t5.config.d_model, "finite": bool(torch.isfinite(emb).all())}
"""


def run_offline(body: str, hf_home: Path) -> dict:
    """BODY's `result`, run offline by name from hf_home, and the network attempts it made."""
    code = GUARDED.format(body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=app_env(HF_HOME=str(hf_home), **OFFLINE), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snapshot(home: Path) -> Path:
    repo = home / "hub" / "models--t5-small"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def test_cache_folder_has_the_hub_layout(tiny_t5_home):
    snap = snapshot(tiny_t5_home)
    assert len(snap.name) == 40 and int(snap.name, 16) >= 0
    assert sorted(p.name for p in snap.iterdir()) == SNAPSHOT_FILES
    config = json.loads((snap / "config.json").read_text())
    assert (config["d_model"], config["vocab_size"], config["num_layers"]) == (512, 400, 2)


@pytest.mark.slow  # builds the T5 again, in a process importing transformers
def test_build_is_byte_identical(tiny_t5_home, tmp_path):
    """A fresh build (same script) gives the cached files, byte for byte: any stack."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_t5.py"),
                           "--out", str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fresh, cached = snapshot(tmp_path / "home"), snapshot(tiny_t5_home)
    assert fresh.name == cached.name
    for name in SNAPSHOT_FILES:
        assert (fresh / name).read_bytes() == (cached / name).read_bytes(), name


@pytest.mark.slow  # a process importing transformers
def test_transformers_loads_it_by_name_offline(tiny_t5_home):
    out = run_offline(TRANSFORMERS_BODY, tiny_t5_home)
    assert out["attempts"] == []
    res = out["result"]
    assert res["vocab"] == 400 and res["extra_id_0"] == 399  # T5 numbers extra ids downwards
    assert res["ids"] == res["spm_ids"]  # the tokenizer is the sentencepiece vocabulary
    assert res["d_model"] == 512 and res["shape"][0] == 2 and res["shape"][2] == 512
    assert res["finite"]


@pytest.mark.slow  # a process importing audiocraft and transformers
def test_audiocraft_t5_conditioner_loads_it_offline(tiny_t5_home):
    out = run_offline(AUDIOCRAFT_BODY, tiny_t5_home)
    assert out["attempts"] == []
    res = out["result"]
    assert res["t5_width"] == 512 and res["shape"][0] == 2 and res["shape"][2] == 16
    assert res["mask_rows"][0] > 0 and res["mask_rows"][1] == 0  # None: no description
    assert res["finite"]


@pytest.mark.parametrize("name, encodec, model_class", [
    ("musicgen_t5", "encodec512", "MusicGen"), ("audiogen_t5", "encodec16_512", "AudioGen")])
def test_t5_xps_export_and_validate_offline(real_xps, tiny_t5_home, tmp_path, name, encodec,
                                            model_class):
    xp = real_xps["xps"][name]
    cfg = torch_load(xp["checkpoint"])["xp.cfg"]
    # the layout transformers' Musicgen represents
    assert cfg.conditioners.description.model == "t5"
    assert cfg.conditioners.description.t5.name == "t5-small"
    assert cfg.codebooks_pattern.modeling == "delay" and cfg.transformer_lm.card == 512
    assert torch_load(real_xps["xps"][encodec]["checkpoint"])["xp.cfg"].rvq.bins == 512
    out = tmp_path / "release"
    proc = run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}", f"input.sig={xp['sig']}",
                   "validate=full", f"output.dir={out}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=True,
                   env=app_env(HF_HOME=str(tiny_t5_home), **OFFLINE))
    manifest = json.loads((out / "export.json").read_text())
    assert_validated(manifest, FULL_CHECKS)  # get_pretrained built T5Conditioner from the cache
    checks = {c["check"]: c for c in manifest["validation"]["checks"]}
    assert checks["get_pretrained"]["model_class"] == model_class, proc.stderr[-2000:]
    assert_same_state(release_state(out / "state_dict.bin"), torch_load(xp["checkpoint"])[
        "best_state"]["model"])
