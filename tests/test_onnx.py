"""output.onnx=true: a real T5 MusicGen XP's transformers half exported to ONNX by Optimum's
exporter (the toolchain installed beside the venv, cached), in the layout Transformers.js
reads, and proven with ONNX Runtime against transformers' model; what cannot be exported is
refused in one line before anything is written."""

import json
import shutil

import pytest
from packaging.version import Version

from audiocraft_ext.writing.release_format import ONNX_GRAPHS
from tests.support.helpers import OFFLINE, ONNX_FRAMES, app_env, run_app

FRAMES = ONNX_FRAMES


def test_the_release_holds_the_onnx_graphs_proven(onnx_release):
    graphs = {f"{name}{kind}.onnx" for name in ONNX_GRAPHS for kind in ("", "_quantized")}
    assert {p.name for p in (onnx_release / "onnx").iterdir()} == graphs
    manifest = json.loads((onnx_release / "export.json").read_text())
    assert {f"onnx/{name}" for name in graphs} <= set(manifest["files"])
    onnx = manifest["transformers"]["onnx"]
    assert set(onnx["files"]) == {f"onnx/{name}" for name in graphs}
    assert onnx["toolchain"]["onnxruntime"]
    assert Version(onnx["toolchain"]["transformers"]) < Version("4.58")
    proof = onnx["proof"]
    assert proof["frames"] == FRAMES == manifest["transformers"]["proof"]["greedy_frames"]
    for run in ("", "_no_guidance", "_other_text"):
        assert proof[f"greedy_identical_frames{run}"] == FRAMES
    assert proof["other_text_changes_codes"] is True
    assert proof["text_encoder_max_abs_diff"] <= 1e-4
    assert proof["logits_max_abs_diff_first_step"] <= 1e-4
    assert proof["logits_max_rel_diff"] <= 1e-4 and proof["decode_max_rel_diff"] <= 1e-4
    # the 8-bit graphs ran: their weights change the audio
    assert proof["quantized"]["decode_max_abs_diff"] > 0
    # Transformers.js reads the decoder's padding token from config.json
    config = json.loads((onnx_release / "config.json").read_text())
    assert config["decoder"]["pad_token_id"] == config["decoder"]["vocab_size"]
    card = (onnx_release / "README.md").read_text()
    assert "## Run it with ONNX Runtime or Transformers.js" in card
    assert "MusicgenForConditionalGeneration.from_pretrained(\"release\", { dtype: 'fp32' })" \
        in card
    assert f"{FRAMES} of {FRAMES} identical frames with guidance 3" in card


@pytest.mark.slow  # an app process
def test_a_release_with_onnx_is_replaced_as_a_release(onnx_release, tiny_t5_home, real_xps,
                                                      tmp_path):
    """The onnx/ folder is the release's own: overwrite=true replaces it, leaves nothing."""
    release = tmp_path / "release"
    shutil.copytree(onnx_release, release)  # the fixture's release serves other tests
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_t5']['sig']}", "output.transformers=true",
            "output.onnx=true", "validate=none", f"output.dir={release}",
            "output.overwrite=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
            env=app_env(HF_HOME=str(tiny_t5_home), **OFFLINE), check=True)
    assert sorted(p.name for p in (release / "onnx").iterdir()) == sorted(
        f"{name}.onnx" for name in ONNX_GRAPHS)
    assert "proof" not in json.loads((release / "export.json").read_text())[
        "transformers"]["onnx"]


REFUSED = {
    "without the transformers half": (
        "musicgen_t5", (), r"it exports the transformers half: add output\.transformers=true"),
    "a melody model": (
        "musicgen_melody", ("output.transformers=true",),
        r"Optimum exports MusicgenForConditionalGeneration only, not a MusicGen-melody's"),
    "8-bit without ONNX": (
        "musicgen_t5", ("output.transformers=true", "output.onnx=false",
                        "output.onnx_quantize=true"), None),
    "without the toolchain": (
        "musicgen_t5", ("output.transformers=true",),
        r"ONNX export runs with Optimum's exporter, .*: run "
        r"`python -m audiocraft_ext\.onnx_format\.toolchain` once \(pip, from the package "
        r"index, into .*empty-cache/onnx-toolchain-\w+\)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_exported_is_refused_before_writing(refused, real_xps, tmp_path, case):
    name, overrides, reason = REFUSED[case]
    refused(tmp_path, "input=checkpoint", f"input.path={real_xps['xps'][name]['checkpoint']}",
            "output.onnx=true", *overrides,
            setenv={"AUDIOCRAFT_EXT_CACHE": str(tmp_path / "empty-cache")},
            message=r"cannot add ONNX \(output\.onnx=true\): " + reason if reason else
            r"output\.onnx_quantize=true quantizes the ONNX graphs: add output\.onnx=true")
