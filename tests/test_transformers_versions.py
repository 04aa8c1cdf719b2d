"""Every transformers release since 4.44 that this stack's torch runs loads a release's
transformers half and generates with it, with no error and no warning about the folder; each
also runs the export's own proof against AudioCraft. The releases are installed side by side
and cached (scripts/transformers_versions.py), each probed in a process of its own."""

import json
import re
import subprocess
import sys
from importlib.metadata import version as installed
from pathlib import Path

import pytest
from safetensors import safe_open

from scripts.transformers_versions import RELEASES, install, runs_here
from tests.support.helpers import OFFLINE, ROOT, app_env, run_app

PROBE = ROOT / "scripts" / "transformers_versions.py"
# What transformers and torch say of themselves whatever the folder holds, and why each is
# not about the release. Any other warning fails the test.
NOT_ABOUT_THE_FOLDER = {
    r"Config of the (text_encoder|audio_encoder|decoder): .* is overwritten by shared":
        "4.46-4.48 say it on building any MusicGen, from configs alone too",
    r"scaled_dot_product_attention` does not support having an empty attention mask":
        "4.44-4.52: guidance's unconditional half falls back to eager attention",
    r"weight_norm` is deprecated|weight_norm is deprecated":
        "torch, of transformers' EnCodec layers",
    r"To copy construct from a tensor": "torch, of transformers' EnCodec code",
    r"allow_ops_in_compiled_graph failed to import torch": "einops under torch 2.1",
}
OTHERS = [v for v in RELEASES if runs_here(v)]
# Releases whose MusicgenMelody.generate() drops all conditioning (text, melody, guidance;
# transformers issue #45647, fixed by PR #48679): the proof must refuse them. Measured here:
# 4.44.2 to 4.52.4 and 5.x condition; 4.57.6 does not.
DROPS_MELODY_CONDITIONING = {"4.57.6"}


def _exported(real_xps: dict, tmp: Path, name: str, env: dict) -> tuple[Path, dict]:
    """The real XP ``name`` exported with its transformers half (this stack's transformers)."""
    out = tmp / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps'][name]['sig']}", "output.transformers=true",
            "validate.transformers_frames=20", "validate.duration=0.5", f"output.dir={out}",
            f"hydra.run.dir={tmp / 'run'}", cwd=tmp, env=env, check=True)
    return out, env


@pytest.fixture(scope="module")
def t5_release(real_xps, tiny_t5_home, tmp_path_factory) -> tuple[Path, dict]:
    return _exported(real_xps, tmp_path_factory.mktemp("versions"), "musicgen_t5",
                     app_env(HF_HOME=str(tiny_t5_home), **OFFLINE))


@pytest.fixture(scope="module")
def melody_release(real_xps, tiny_t5_home, tiny_demucs_home, tmp_path_factory) -> tuple[Path, dict]:
    return _exported(real_xps, tmp_path_factory.mktemp("versions-melody"), "musicgen_melody",
                     app_env(HF_HOME=str(tiny_t5_home), TORCH_HOME=str(tiny_demucs_home),
                             **OFFLINE))


VERSIONS = pytest.mark.parametrize("version", [None, *OTHERS],
                                   ids=lambda v: v or f"own-{installed('transformers')}")


def _probe(release: Path, env: dict, version: str | None) -> subprocess.CompletedProcess:
    if version is not None:
        env = {**env, "PYTHONPATH": str(install(version))}
    return subprocess.run([sys.executable, str(PROBE), "probe", str(release), "--frames", "20",
                           "--proof-frames", "20"], capture_output=True, text=True, env=env,
                          timeout=600)


@VERSIONS
def test_each_transformers_release_loads_and_generates(t5_release, version):
    proc = _probe(*t5_release, version)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["transformers"] == (version or installed("transformers"))
    about_the_folder = [w for w in found["warnings"]
                        if not any(re.search(p, w) for p in NOT_ABOUT_THE_FOLDER)]
    assert about_the_folder == []
    assert found["audio_finite"] and found["audio_shape"][:2] == [1, 1]
    proof = found["proof"]
    assert proof["transformers_version"] == found["transformers"]
    assert proof["lm_logits_max_abs_diff_early"] <= 1e-4
    for run in ("", "_no_guidance", "_other_text"):
        assert proof[f"greedy_identical_frames{run}"] == proof["greedy_frames"] == 20
    assert proof["other_text_changes_codes"] is True


@VERSIONS
def test_a_melody_release_is_proven_or_refused_per_release(melody_release, version):
    """MusicgenMelodyForConditionalGeneration: the proof's conditioning check tells the
    releases that condition generation from the ones that silently drop it."""
    proc = _probe(*melody_release, version)
    if version in DROPS_MELODY_CONDITIONING:
        assert proc.returncode != 0
        said = proc.stderr.strip().splitlines()[-1]
        assert "other_text_changes_codes False, other_melody_changes_codes False" in said
        assert f"transformers {version}'s MusicgenMelody.generate ignores its text" in said
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    proof = json.loads(proc.stdout.strip().splitlines()[-1])["proof"]
    for run in ("", "_no_guidance", "_other_text", "_other_melody"):
        assert proof[f"greedy_identical_frames{run}"] == proof["greedy_frames"] == 20
    assert proof["other_text_changes_codes"] is proof["other_melody_changes_codes"] is True


def test_the_folder_holds_what_every_release_reads(t5_release):
    """The two keys that broke or alarmed older releases: T5's extra tokens as a list (4.48 to
    4.57: AttributeError) and the position table 4.44-4.48 keep as a weight."""
    release, _ = t5_release
    tokenizer = json.loads((release / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in tokenizer
    assert "<extra_id_0>" in tokenizer["additional_special_tokens"]
    with safe_open(str(release / "model.safetensors"), "pt") as weights:
        assert "decoder.model.decoder.embed_positions.weights" in set(weights.keys())
    config = json.loads((release / "config.json").read_text())
    # generation reads the special token from generation_config.json; 5.x calls a decoder
    # pad/bos of 512 (one past a 512-code vocabulary) "outside the vocabulary" on every load
    assert (config["decoder"]["pad_token_id"], config["decoder"]["bos_token_id"]) == (None, None)
    assert config["architectures"] == ["MusicgenForConditionalGeneration"]
