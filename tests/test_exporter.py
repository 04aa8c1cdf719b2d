"""export_release on real solver checkpoints, checked with stock audiocraft."""

import json
import re
import subprocess
import sys

import audiocraft
import pytest
import torch
from omegaconf import OmegaConf

from audiocraft_ext import (
    CheckpointCompression,
    ExportError,
    NoCompression,
    PretrainedCompression,
    StateConfig,
    ValidateConfig,
    export_release,
)
from tests.support.helpers import (
    FULL_CHECKS,
    LOAD_CHECKS,
    assert_same_state,
    assert_validated,
    release_state,
    sha256_of,
    torch_load,
)

LOAD = ValidateConfig(level="load")


@pytest.fixture(scope="module")
def release(musicgen_ckpt, tmp_path_factory):
    return export_release(musicgen_ckpt, tmp_path_factory.mktemp("rel") / "musicgen")


def test_state_dict_bin_is_what_export_lm_writes(release, musicgen_ckpt):
    source = torch_load(musicgen_ckpt)
    # stock loaders on torch >= 2.6 read with weights_only=True: the release must allow it
    pkg = torch.load(release.release_dir / "state_dict.bin", map_location="cpu", weights_only=True)
    assert sorted(pkg) == ["best_state", "exported", "version", "xp.cfg"]
    assert pkg["exported"] is True and pkg["version"] == audiocraft.__version__
    assert pkg["xp.cfg"] == OmegaConf.to_yaml(source["xp.cfg"])
    assert_same_state(pkg["best_state"], source["best_state"]["model"])


def test_compression_model_is_the_encodec_xp_best_state(release, encodec_ckpt):
    pkg = torch.load(release.release_dir / "compression_state_dict.bin", weights_only=True)
    source = torch_load(encodec_ckpt)
    assert OmegaConf.create(pkg["xp.cfg"]).solver == "compression"
    assert_same_state(pkg["best_state"], source["best_state"]["model"])


def test_manifest(release, musicgen_ckpt):
    manifest = json.loads((release.release_dir / "export.json").read_text())
    # relative to the Dora dir by default (output.record_paths=relative)
    assert manifest["source"]["path"] == f"xps/{musicgen_ckpt.parent.name}/checkpoint.th"
    assert manifest["source"]["bytes"] == musicgen_ckpt.stat().st_size
    assert manifest["state"]["key"] == "best_state"
    assert manifest["state"]["dtypes"] == {"float16": manifest["state"]["tensors"]}
    best = torch_load(musicgen_ckpt)["best_state"]["model"]
    assert manifest["state"]["tensors"] == len(best)
    assert manifest["state"]["parameters"] == sum(t.numel() for t in best.values())
    for name, facts in manifest["files"].items():
        path = release.release_dir / name
        assert facts == {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    # every file but the two that describe the others
    every = {p.relative_to(release.release_dir).as_posix()
             for p in release.release_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == every - {"README.md", "export.json"}
    assert {"state_dict.bin", "compression_state_dict.bin", "samples/text.wav",
            "training_curves.png"} <= set(manifest["files"])
    assert manifest["versions"]["audiocraft"] == audiocraft.__version__
    # the file's layout, which readers of export.json rely on
    assert list(manifest) == ["release", "source", "state", "compression", "repairs", "files",
                              "versions", "config", "validation", "timings", "model",
                              "training", "samples", "curves", "license", "record_paths",
                              "paths_recorded", "transformers"]
    assert set(manifest["source"]) == {"path", "bytes", "mtime", "name", "solver", "xp_sig",
                                       "argv", "solver_config", "weights"}
    assert set(manifest["state"]) == {"selected", "key", "dtype", "tensors", "parameters",
                                      "dtypes", "bytes"}  # "members" only for state=average
    assert set(manifest["compression"]) == {"reference", "pretrained", "source", "key",
                                            "tensors", "parameters", "dtypes", "bytes"}
    assert set(manifest["validation"]) == {"level", "checks", "skipped",
                                           "compression_stand_in"}
    assert_validated(manifest, FULL_CHECKS)
    checks = {c["check"]: c for c in manifest["validation"]["checks"]}
    assert all(c["seconds"] >= 0 for c in checks.values())
    assert checks["get_pretrained"]["model_class"] == "MusicGen"
    assert checks["generate"]["shapes"] == {"unconditional": [1, 1, 32000], "text": [1, 1, 32000]}


@pytest.mark.slow
def test_a_separate_process_loads_it_with_get_pretrained(release):
    code = ("import sys, torch; from audiocraft.models import MusicGen; "
            "m = MusicGen.get_pretrained(sys.argv[1], device='cpu'); "
            "m.set_generation_params(duration=0.5); w = m.generate(['calm piano']); "
            "print(tuple(w.shape), bool(torch.isfinite(w).all()))")
    out = subprocess.run([sys.executable, "-c", code, str(release.release_dir)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "(1, 1, 16000) True"


def test_existing_release_is_kept_unless_overwrite(musicgen_ckpt, tmp_path):
    dest = tmp_path / "rel"
    export_release(musicgen_ckpt, dest, validate=LOAD)
    before = sha256_of(dest / "state_dict.bin")
    # phrased for the library: its own argument names, not the command line's keys
    with pytest.raises(ExportError, match=r"already exists; choose another out_dir or set "
                                          r"overwrite=True to replace it"):
        export_release(musicgen_ckpt, dest, state="last", validate=LOAD)
    assert sha256_of(dest / "state_dict.bin") == before
    export_release(musicgen_ckpt, dest, state="last", validate=LOAD, overwrite=True)
    assert sha256_of(dest / "state_dict.bin") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]  # no lock, nothing aside


def test_a_model_get_pretrained_refuses_is_said_before_writing(musicgen_xp, tmp_path, caplog):
    """Trained on 5 s segments: stock MusicGen.get_pretrained asserts its 18 s extend_stride
    is shorter. validate=full would run it: refused before anything is written, with what to
    do; validate=load exports it and says the same once."""
    short = musicgen_xp("dataset.segment_duration=5")
    said = (r"stock MusicGen.get_pretrained cannot load this model: it was trained on "
            r"dataset.segment_duration=5 s and asserts that its 18 s extend_stride is shorter; "
            r"load the release with MusicGen\(name, loaders.load_compression_model\(folder\), "
            r"loaders.load_lm_model\(folder\), max_duration=30\) \(any max_duration above "
            r"18 s; generating beyond 5 s goes past what it was trained on\), or retrain with "
            r"segments over 18 s")
    with pytest.raises(ExportError, match=said + r"; validate='load' exports it without the "
                                                 r"get_pretrained check$"):
        export_release(short, tmp_path / "rel")
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, no lock
    with caplog.at_level("WARNING"):
        export_release(short, tmp_path / "rel", validate=LOAD)  # loaders accept it
    assert [r.message for r in caplog.records if re.fullmatch(said, r.message)]


def test_missing_state_is_a_clear_error(no_best_ckpt, tmp_path):
    with pytest.raises(ExportError, match="no usable best state"):
        export_release(no_best_ckpt, tmp_path / "rel")
    assert not (tmp_path / "rel").exists()


@pytest.mark.parametrize("state, key", [("auto", "fsdp_best_state"), ("best", "best_state"),
                                        ("last", "model")])
def test_state_choices_export_the_chosen_weights(fsdp_ckpt, tmp_path, state, key):
    result = export_release(fsdp_ckpt, tmp_path / "rel", state=state, validate=LOAD)
    source = torch_load(fsdp_ckpt)[key]
    expected = source if key == "model" else source["model"]
    assert_same_state(release_state(result.release_dir / "state_dict.bin"), expected)
    assert result.manifest.state.key == key


def test_pretrained_pointer_and_offline_validation(musicgen_ckpt, tmp_path, network_attempts):
    """A //pretrained/ compression model that audiocraft builds locally (its debug model) ships as a
    pointer and is validated in full without the network."""
    result = export_release(musicgen_ckpt, tmp_path / "rel",
                            compression=PretrainedCompression(name="debug_compression_model"))
    pkg = torch.load(result.release_dir / "compression_state_dict.bin", weights_only=True)
    assert pkg == {"pretrained": "debug_compression_model", "exported": True,
                   "version": audiocraft.__version__}
    assert result.manifest.compression.reference == "//pretrained/debug_compression_model"
    assert result.manifest.validation.level == "full"
    # a pointer has no tensors to check in the file: get_pretrained loaded it itself
    assert_validated(result.manifest, ["lm_file", "get_pretrained", "generate"])
    assert result.manifest.validation.compression_stand_in is None
    assert network_attempts == []


def test_no_compression_model_skips_get_pretrained_and_says_so(musicgen_ckpt, tmp_path):
    result = export_release(musicgen_ckpt, tmp_path / "rel", compression=NoCompression())
    assert sorted(p.name for p in result.release_dir.iterdir()) == [
        "README.md", "export.json", "state_dict.bin", "training_curves.png"]
    assert_validated(result.manifest, ["lm_file", "load_lm_model"])
    assert result.manifest.validation.skipped == [
        "compression and get_pretrained: compression=none"]


def test_explicit_compression_model_checkpoint(musicgen_ckpt, encodec_ckpt, tmp_path):
    a = export_release(musicgen_ckpt, tmp_path / "a", validate=LOAD)
    b = export_release(musicgen_ckpt, tmp_path / "b", validate=LOAD,
                       compression=CheckpointCompression(path=str(encodec_ckpt)))
    assert a.manifest.files == b.manifest.files  # same bytes: torch.save is deterministic


def test_sig_outside_a_dora_dir_needs_audiocraft_dora_dir(musicgen_ckpt, dora_dir, tmp_path,
                                                          monkeypatch):
    lone = tmp_path / "lone.th"
    lone.write_bytes(musicgen_ckpt.read_bytes())
    monkeypatch.delenv("AUDIOCRAFT_DORA_DIR", raising=False)
    with pytest.raises(ExportError,
                       match="is not inside a Dora dir .* AUDIOCRAFT_DORA_DIR is unset"):
        export_release(lone, tmp_path / "rel", validate=LOAD)
    monkeypatch.setenv("AUDIOCRAFT_DORA_DIR", str(dora_dir))
    export_release(lone, tmp_path / "rel", validate=LOAD)


def test_unknown_sig_is_a_clear_error(musicgen_xp, tmp_path):
    ckpt = musicgen_xp(compression="//sig/deadbeef")
    with pytest.raises(ExportError, match="cannot resolve the compression model //sig/deadbeef: "
                                          "no XP 'deadbeef' in"):
        export_release(ckpt, tmp_path / "rel")


def test_audiogen_validates_with_audiogen_class(musicgen_xp, tmp_path):
    ckpt = musicgen_xp("solver=audiogen", "dataset.segment_duration=10")
    result = export_release(ckpt, tmp_path / "rel")
    checks = {c.check: c for c in result.manifest.validation.checks}
    assert checks["get_pretrained"].model_class == "AudioGen"
    assert checks["generate"].shapes == {"unconditional": [1, 1, 32000], "text": [1, 1, 32000]}


def test_plain_omegaconf_config(plain_cfg_ckpt, tmp_path):
    result = export_release(plain_cfg_ckpt, tmp_path / "rel")
    assert_validated(result.manifest, FULL_CHECKS)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_output_dtype_casts_floating_tensors(musicgen_ckpt, tmp_path, dtype):
    result = export_release(musicgen_ckpt, tmp_path / "rel", dtype=dtype)  # validate=full
    target = getattr(torch, dtype)
    source = torch_load(musicgen_ckpt)["best_state"]["model"]
    assert_same_state(release_state(result.release_dir / "state_dict.bin"),
                      {k: v.to(target) for k, v in source.items()})
    assert result.manifest.state.dtype == dtype
    assert result.manifest.state.dtypes == {dtype: len(source)}
    assert_validated(result.manifest, FULL_CHECKS)


def test_manifest_times_export_and_validation_separately(release):
    timings = release.manifest.timings
    for phase in ("export", "validation"):
        assert timings[phase]["seconds"] > 0
        assert timings[phase]["phase_peak_rss_bytes"] > 50 << 20  # a Python process with torch
        # the process's peak is never reset: it covers the phase and everything before
        assert timings[phase]["peak_rss_bytes"] >= timings[phase]["phase_peak_rss_bytes"]
    assert timings["validation"]["peak_rss_bytes"] >= timings["export"]["peak_rss_bytes"]


_SPIKE_THEN_EXPORT = """
import json, resource, sys, torch
from audiocraft_ext import export_release
spike = torch.ones(400 << 20, dtype=torch.uint8)  # 400 MiB, touched, then freed
del spike
result = export_release(sys.argv[1], sys.argv[2], validate="none")
print(json.dumps({"timings": result.manifest.timings,
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def test_the_manifest_reports_the_whole_process_peak(musicgen_ckpt, tmp_path):
    """An earlier peak stays in the manifest and in what the kernel tells /usr/bin/time."""
    proc = subprocess.run([sys.executable, "-c", _SPIKE_THEN_EXPORT, str(musicgen_ckpt),
                           str(tmp_path / "rel")], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.splitlines()[-1])
    export = out["timings"]["export"]
    assert export["peak_rss_bytes"] > export["phase_peak_rss_bytes"] + (300 << 20)
    assert out["ru_maxrss"] >= export["peak_rss_bytes"] - (1 << 20)  # per-CPU counter slack


def test_only_failures_to_reach_the_network_are_blamed_on_it():
    from audiocraft_ext.validation.messages import from_the_network

    class LocalEntryNotFoundError(Exception):  # huggingface_hub's, matched by name
        pass

    try:
        try:
            raise LocalEntryNotFoundError("offline and not in the cache")
        except LocalEntryNotFoundError as exc:
            raise OSError("couldn't connect to 'https://huggingface.co'") from exc
    except OSError as offline:
        assert from_the_network(offline)
    assert from_the_network(ConnectionRefusedError("refused"))
    assert not from_the_network(OSError("foo/bar is not a valid model identifier"))  # a 404
    try:
        try:
            raise TimeoutError("earlier, unrelated")
        except TimeoutError:
            raise KeyError("a bug") from None
    except KeyError as hidden:
        assert not from_the_network(hidden)  # `from None` hides the context


@pytest.mark.parametrize("args, message", [
    ({"state": "Best"}, r"^state='Best' is not an option \(known: auto, fsdp_best, best, last, "
                        r"ema, average\)$"),
    ({"dtype": "fp16"}, r"^dtype='fp16' is not an option \(known: keep, float16, bfloat16, "
                        r"float32\)$"),
    ({"validate": "lod"}, r"^validate='lod' is not an option \(known: full, load, none\)$"),
    ({"record_paths": "rel"}, r"^record_paths='rel' is not an option \(known: relative, "
                              r"absolute\)$"),
    ({"state": StateConfig(select="avg")}, r"^select='avg' is not an option \(known: auto, "),
    ({"samples": "no"}, r"^samples='no' is not an option \(known: True, False\)$"),
    ({"overwrite": 1}, r"^overwrite=1 is not an option \(known: True, False\)$"),
])
def test_library_callers_misspelling_a_choice_get_one_line(musicgen_ckpt, tmp_path, args,
                                                           message):
    with pytest.raises(ExportError, match=message):
        export_release(musicgen_ckpt, tmp_path / "rel", **args)
    assert not (tmp_path / "rel").exists()


def test_validate_may_be_given_as_its_level(musicgen_ckpt, tmp_path):
    result = export_release(musicgen_ckpt, tmp_path / "rel", validate="load")
    assert_validated(result.manifest, LOAD_CHECKS)


def test_the_library_takes_the_schema_the_command_line_composes(musicgen_ckpt, tmp_path):
    """export() takes config.py's ExportConfig (groups left out take their default option,
    enum values may be strings); export_release is its keyword form."""
    from audiocraft_ext import ExportConfig, OutputConfig, export

    spec = ExportConfig(output=OutputConfig(dir=str(tmp_path / "rel"), dtype="float32"),
                        validate=ValidateConfig(level="load"))
    result = export(musicgen_ckpt, spec)
    assert_validated(result.manifest, LOAD_CHECKS)
    assert list(result.manifest.state.dtypes) == ["float32"]
    assert result.manifest.state.selected == "auto" and result.manifest.compression is not None
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'overwite' \(options of "
                                        r"OutputConfig: dtype, license, onnx, onnx_quantize, "
                                        r"overwrite, "):
        export_release(musicgen_ckpt, tmp_path / "other", overwite=True)
