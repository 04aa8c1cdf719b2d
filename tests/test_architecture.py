"""A config far larger than its tensors is refused before any model is built from it.

Validation and transformers' proof build models from ``xp.cfg``: ``num_layers=100000`` over a
2-layer state used to allocate for minutes, ``n_q=100000`` ended in a bare AssertionError, a
NaN guidance coefficient in an IndexError. Each case below is a real demo XP (2 layers, dim
32, 4 codebooks of 256) whose config was edited after training, exported in process at
``validate=full``: refused in one line naming the mismatch, nothing published, in well under
a second of checking (shapes come from the lazy state: no tensor is read).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audiocraft_ext import export_release
from audiocraft_ext.config import CheckpointCompression
from audiocraft_ext.errors import ExportError
from audiocraft_ext.families import family_of
from audiocraft_ext.untrusted.architecture import check_architecture, lm_problems
from tests.support.app_cases import checkpoint_copy
from tests.support.helpers import torch_load


def _cfg_edit(**values):
    """An edit of a checkpoint's xp.cfg: ``a__b=value`` sets ``a.b``."""
    def edit(pkg: dict) -> None:
        OmegaConf.set_struct(pkg["xp.cfg"], False)
        for key, value in values.items():
            OmegaConf.update(pkg["xp.cfg"], key.replace("__", "."), value)
    return edit


def _refused(checkpoint: Path, tmp_path: Path, **options) -> str:
    """Export ``checkpoint`` (validate=full); assert it is refused with one line, quickly, and
    that nothing is left where the release would be. Return the line."""
    out = tmp_path / "out" / "release"
    started = time.monotonic()
    with pytest.raises(ExportError) as info:
        export_release(checkpoint, out, **options)
    assert time.monotonic() - started < 30  # minutes and gigabytes before the check
    line = str(info.value)
    assert "\n" not in line
    assert not out.parent.exists() or not list(out.parent.iterdir())
    return line


LM_CASES = [  # (xp.cfg edits, export options, the line after "<checkpoint>: ")
    ({"transformer_lm__num_layers": 100000}, {},
     "xp.cfg says transformer_lm.num_layers=100000 but the state holds 2 layers "
     "(transformer.layers.0-1)"),
    ({"transformer_lm__dim": 200000}, {},
     "xp.cfg says transformer_lm.dim=200000 but the state's tensors are 32 wide "
     "(emb.0.weight [257, 32])"),
    ({"transformer_lm__card": 1e9}, {},  # what the command line's card=1e9 gives: a float
     "xp.cfg says transformer_lm.card=1000000000.0 but the state's embeddings (card + 1 rows) "
     "and heads are for a card of 256 (emb.0.weight [257, 32])"),
    ({"transformer_lm__n_q": 100000}, {},
     "xp.cfg says transformer_lm.n_q=100000 but the state holds 4 codebook embeddings "
     "(emb.0-3)"),
    ({"transformer_lm__num_heads": 3}, {},
     "xp.cfg says transformer_lm.num_heads=3, which does not divide transformer_lm.dim=32 "
     "into heads"),
    ({"transformer_lm__num_heads": 0}, {},
     "xp.cfg says transformer_lm.num_heads=0, which does not divide transformer_lm.dim=32 "
     "into heads"),
    ({"transformer_lm__hidden_scale": 1000}, {},
     "xp.cfg says transformer_lm.hidden_scale=1000 but the state's feed-forward layers are "
     "128 wide, not 1000 x dim 32 (transformer.layers.0.linear1.weight [128, 32])"),
    ({"dataset__segment_duration": 1e6}, {"transformers": True},
     "xp.cfg says dataset.segment_duration=1000000.0 (seconds), longer than any training "
     "segment (3600 s at most)"),
    ({"classifier_free_guidance__inference_coef": float("nan")}, {"transformers": True},
     "xp.cfg says classifier_free_guidance.inference_coef=nan, which is not a finite number"),
    ({"classifier_free_guidance__inference_coef": "strong"}, {},
     "xp.cfg says classifier_free_guidance.inference_coef='strong', which is not a finite "
     "number"),
    # MAGNeT builds (n_q - 1) x num_heads masks of frames^2 floats with the model
    ({"solver": "magnet", "lm_model": "transformer_lm_magnet", "dataset__segment_duration": 600,
      "transformer_lm__compression_model_framerate": 50, "transformer_lm__subcodes_context": 5},
     {}, "xp.cfg says dataset.segment_duration=600 (seconds), 30000 frames at "
     "transformer_lm.compression_model_framerate=50: MAGNeT's attention masks would take 20 "
     "GiB (at most 8 GiB)"),
]


@pytest.mark.parametrize("edits, options, line", LM_CASES, ids=[
    "num_layers", "dim", "card", "n_q", "num_heads", "no_heads", "hidden_scale",
    "segment_duration", "nan_guidance", "text_guidance", "magnet_segment"])
def test_an_lm_config_that_does_not_describe_its_state(tmp_path, musicgen_ckpt, edits, options,
                                                       line):
    path = checkpoint_copy(tmp_path, musicgen_ckpt, _cfg_edit(**edits))
    assert _refused(path, tmp_path, **options) == f"{path}: {line}"


def test_one_small_tensor_cannot_vouch_for_a_giant(tmp_path, musicgen_ckpt):
    """Every size agrees with some tensor (out_norm is 200,000 wide, the feed-forward layers
    128 = 0.00064 x 200,000), but 2 layers of width 200,000 hold 10^11 parameters."""
    def edit(pkg: dict) -> None:
        _cfg_edit(transformer_lm__dim=200000, transformer_lm__hidden_scale=0.00064)(pkg)
        pkg["best_state"]["model"]["out_norm.weight"] = torch.ones(200000)

    path = checkpoint_copy(tmp_path, musicgen_ckpt, edit)
    line = _refused(path, tmp_path)
    implied = 2 * 2 * 200000**2 + 4 * (2 * 256 + 1) * 200000
    assert line.startswith(f"{path}: xp.cfg describes an LM of at least {implied:,} "
                           "parameters (transformer_lm.num_layers=2, dim=200000, n_q=4, "
                           "card=256) but the state holds ")


ENCODEC_CASES = [
    ({"rvq__n_q": 100000},
     "xp.cfg says rvq.n_q=100000 but the state holds 4 codebooks (quantizer.vq.layers.0-3)"),
    ({"rvq__bins": 1 << 30},
     "xp.cfg says rvq.bins=1073741824 but the state's codebooks have 256 entries "
     "(quantizer.vq.layers.0._codebook.embed [256, 32])"),
    ({"seanet__dimension": 100000},
     "xp.cfg says seanet.dimension=100000 but the state's codebooks hold vectors of 32 "
     "(quantizer.vq.layers.0._codebook.embed [256, 32])"),
    ({"seanet__n_filters": 1 << 20},
     "xp.cfg says seanet.n_filters=1048576 but the state's first convolution has 4 filters "
     "(encoder.model.0.conv.conv.weight_v [4, 1, 7])"),
    ({"seanet__ratios": [8, 5, 4, 100000]},
     "xp.cfg says seanet.ratios=[8, 5, 4, 100000] but the state's decoder upsamples 4 times, "
     "with kernels [16, 10, 8, 8] of 2 x ratio (decoder.model.3, 6, 9, 12)"),
    ({"seanet__lstm": 100000},
     "xp.cfg says seanet.lstm=100000 but the state holds 2 decoder LSTM layers "
     "(decoder.model.1.lstm.weight_ih_l0-1)"),
]


@pytest.mark.parametrize("edits, line", ENCODEC_CASES,
                         ids=["n_q", "bins", "dimension", "n_filters", "ratios", "lstm"])
def test_an_encodec_config_that_does_not_describe_its_state(tmp_path, encodec_ckpt, edits,
                                                            line):
    path = checkpoint_copy(tmp_path, encodec_ckpt, _cfg_edit(**edits))
    assert _refused(path, tmp_path) == f"{path}: {line}"


def test_the_encodec_shipped_beside_an_lm_is_checked_too(tmp_path, musicgen_ckpt, encodec_ckpt):
    encodec = checkpoint_copy(tmp_path, encodec_ckpt, _cfg_edit(rvq__n_q=100000))
    line = _refused(musicgen_ckpt, tmp_path,
                    compression=CheckpointCompression(path=str(encodec)))
    assert line == (f"{encodec}: xp.cfg says rvq.n_q=100000 but the state holds 4 codebooks "
                    "(quantizer.vq.layers.0-3)")


def test_values_validation_explains_are_left_to_it(musicgen_ckpt):
    """Interpolations and non-numbers are not this check's: validation reports them (see the
    attack tests); a state damaged in one tensor is left to the comparison, which names it."""
    def edit(pkg: dict) -> None:
        _cfg_edit(transformer_lm__dim="${oc.env:NOPE}", dataset__segment_duration="thirty")(pkg)
        pkg["best_state"]["model"]["emb.0.weight"] = torch.zeros(5, 7)

    pkg = torch_load(musicgen_ckpt)
    edit(pkg)
    cfg = OmegaConf.create(OmegaConf.to_container(pkg["xp.cfg"], resolve=False))
    assert lm_problems(cfg, pkg["best_state"]["model"]) == []


@pytest.mark.parametrize("name", ["musicgen_ckpt", "encodec_ckpt"])
def test_genuine_demo_xps_are_exported(tmp_path, request, name):
    path = request.getfixturevalue(name)
    result = export_release(path, tmp_path / "release", validate="none")
    assert result.release_dir.is_dir()


def test_genuine_trained_xps_pass(real_xps):
    """Every state of every XP audiocraft's own training wrote (EnCodecs, MusicGen with and
    without EMA, AudioGen, the T5-conditioned ones, MAGNeT) matches its config."""
    from audiocraft_ext.config import StateChoice
    from audiocraft_ext.untrusted.states import load_solver_checkpoint, select_state
    from audiocraft_ext.untrusted.xp_config import raw_value, xp_config

    checked = 0
    for name, xp in real_xps["xps"].items():
        pkg = load_solver_checkpoint(Path(xp["checkpoint"]))
        cfg = xp_config(pkg, name)
        for choice in (StateChoice.best, StateChoice.last, StateChoice.ema):
            if isinstance(pkg.get({"best": "best_state", "last": "model", "ema": "ema"}[
                    choice.value]), dict):
                state = select_state(pkg, choice, name)[1]
                check_architecture(family_of(raw_value(cfg, "solver")), cfg, state, name)
                checked += 1
    assert checked >= 2 * len(real_xps["xps"])


def test_the_position_table_is_bounded_whatever_the_compression_model_says():
    """The frames of a segment come from the EnCodec's sample rate and ratios too: a crafted
    EnCodec config (1 GHz) cannot size transformers' position table either."""
    from audiocraft_ext.transformers_format.files import MAX_SEGMENT_FRAMES, _segment_frames

    cfg = OmegaConf.create({"dataset": {"segment_duration": 30}})
    assert _segment_frames(cfg, {"sampling_rate": 32000, "upsampling_ratios": [8, 5, 4, 4]}) \
        == 1500
    with pytest.raises(ExportError, match=r"^dataset.segment_duration=30 s at 1.5625e\+06 "
                       r"frames/s is 4.6875e\+07 frames: transformers' position table and "
                       rf"generation config are made for 1 to {MAX_SEGMENT_FRAMES:,}$"):
        _segment_frames(cfg, {"sampling_rate": 10**9, "upsampling_ratios": [8, 5, 4, 4]})


def test_transformers_needs_a_finite_guidance_scale():
    from audiocraft_ext.app.demo import compose_xp_config
    from audiocraft_ext.transformers_format.mapping import refusals

    lm_cfg = compose_xp_config("musicgen", ["compression_model_checkpoint=//sig/none"])
    for coef in (math.nan, math.inf, None):
        lm_cfg.classifier_free_guidance.inference_coef = coef
        assert (f"classifier_free_guidance.inference_coef {coef!r}: transformers' guidance "
                "scale needs a finite number") in refusals(lm_cfg, lm_cfg)
