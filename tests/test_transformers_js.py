"""A real browser-side client: Transformers.js (npm @huggingface/transformers, under Node,
offline) runs a release's ONNX graphs and decodes greedily the codes PyTorch's transformers
decodes, but where it does not force the end padding of the delay pattern: transformers pads
codebook k >= 1 over its last frames, Transformers.js feeds its own codes back there, so those
frames (the last K-1 of codebooks 1..K-1) may differ and the rest may not."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocraft_ext.onnx_format.toolchain import cache_root, cached_folder
from audiocraft_ext.transformers_format.equivalence import codes_captured
from tests.support.helpers import ROOT

TRANSFORMERS_JS = "4.3.2"
RUNNER = ROOT / "tests" / "support" / "transformers_js_codes.mjs"
STEPS = 40


@pytest.fixture(scope="session")
def transformers_js() -> Path:
    """@huggingface/transformers from the npm registry, installed once (cached). Its
    onnxruntime-node would fetch GPU libraries from outside the registry on install: skipped,
    its CPU library ships in the package."""

    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed (node 20 is on the project's machines)")

    def fill(folder: Path) -> None:
        (folder / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--save-exact",
                        f"@huggingface/transformers@{TRANSFORMERS_JS}"], cwd=folder, check=True,
                       capture_output=True, env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"})

    return cached_folder(cache_root() / f"transformers-js-{TRANSFORMERS_JS}", fill)


def _javascript_codes(packages: Path, release: Path, dtype: str, guidance: float) -> dict:
    proc = subprocess.run(["node", str(RUNNER), str(packages), str(release), dtype, str(STEPS),
                           str(guidance)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _python_codes(release: Path, input_ids: list[int], guidance: float) -> np.ndarray:
    """transformers' greedy codes [1, batch, K, frames] for the same tokens (PyTorch)."""
    import transformers

    model = transformers.MusicgenForConditionalGeneration.from_pretrained(release).eval()
    ids = torch.tensor([input_ids])
    with codes_captured(model) as captured, torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       guidance_scale=guidance, max_new_tokens=STEPS)
    return captured[0].numpy()


@pytest.mark.parametrize("guidance", [3.0, 1.0], ids=["guidance-3", "no-guidance"])
def test_transformers_js_decodes_what_transformers_decodes(onnx_release, transformers_js,
                                                           guidance):
    found = _javascript_codes(transformers_js, onnx_release, "fp32", guidance)
    ours = np.array(found["data"], dtype=np.int64).reshape(found["dims"])
    theirs = _python_codes(onnx_release, found["input_ids"], guidance)
    assert ours.shape == theirs.shape
    books, frames = ours.shape[-2:]
    assert frames == STEPS - (books - 1) and found["audio_dims"][:2] == [1, 1]
    # the delay pattern's tail: codebooks 1..K-1 over the last K-1 frames
    tail = np.zeros((books, frames), dtype=bool)
    tail[1:, frames - (books - 1):] = True
    differs = (ours != theirs)[0, 0]
    assert not differs[~tail].any(), np.argwhere(differs & ~tail)[:10]


def test_transformers_js_runs_the_8_bit_graphs(onnx_release, transformers_js):
    """q8 (the *_quantized graphs): decodes codes of the model's card, at its sample rate."""
    found = _javascript_codes(transformers_js, onnx_release, "q8", 3.0)
    codes = np.array(found["data"]).reshape(found["dims"])
    config = json.loads((onnx_release / "config.json").read_text())
    assert codes.shape[-2] == config["decoder"]["num_codebooks"]
    assert 0 <= codes.min() and codes.max() < config["decoder"]["vocab_size"]
    assert found["audio_dims"][:2] == [1, 1] and found["audio_dims"][2] > 0
