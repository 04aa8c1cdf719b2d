"""transformers' format: refusals, strict loading and numeric equivalence with AudioCraft.

The models are tiny, built in-process by audiocraft's builders from the demo configs. The LM
cannot build a T5 conditioner offline, so it is built with a LUT conditioner whose output
projection has T5's shape (512 -> dim): the mapping is given the same config with the
conditioner declared as a frozen T5 and the state without the LUT's table, which is exactly
what a T5 release holds (only ``output_proj``). A tiny random transformers ``T5EncoderModel``
(d_model 512, 2 layers) produces the text hidden states of both sides.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from audiocraft_ext.app.demo import compose_xp_config
from audiocraft_ext.transformers_format.equivalence import prove
from audiocraft_ext.transformers_format.mapping import refusals

CARD = 512  # 9 bits: 4 codebooks fit 4.44's and 5.x's bandwidth rules at once
LM_OVERRIDES = ["compression_model_checkpoint=//sig/none", f"transformer_lm.card={CARD}",
                "transformer_lm.cross_attention=true", "conditioners.description.lut.dim=512"]


def _as_t5(lm_cfg: DictConfig) -> DictConfig:
    """The LM config with its conditioner declared as a frozen t5-small."""
    cfg = copy.deepcopy(lm_cfg)
    with open_dict(cfg):
        cfg.conditioners.description = OmegaConf.create(
            {"model": "t5", "t5": {"name": "t5-small", "finetune": False, "word_dropout": 0.0,
                                  "normalize_text": False}})
    return cfg


@pytest.fixture(scope="module")
def built() -> dict:
    from audiocraft.models import builders

    torch.manual_seed(0)
    compression_cfg = compose_xp_config("encodec", [f"rvq.bins={CARD}"])
    compression = builders.get_compression_model(compression_cfg)
    compression.train()  # the first forward initialises the RVQ codebooks (k-means)
    compression(torch.randn(2, 1, 32000))
    compression.eval()
    lm_cfg = compose_xp_config("musicgen", LM_OVERRIDES)
    lm = builders.get_lm_model(lm_cfg).eval()
    lm_state = {k: v for k, v in lm.state_dict().items() if not k.endswith(".embed.weight")}
    return {"compression_cfg": compression_cfg, "compression": compression,
            "lm_cfg": _as_t5(lm_cfg), "lm": lm, "lm_state": lm_state}


def _text_encoder() -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(1)
    config = T5Config(vocab_size=400, d_model=512, d_kv=32, d_ff=128, num_layers=2,
                      num_heads=4, dropout_rate=0.0)
    return T5EncoderModel(config).eval()


def test_tiny_models_have_no_refusal(built: dict) -> None:
    assert refusals(built["lm_cfg"], built["compression_cfg"]) == []


def test_release_is_equivalent_in_transformers(built: dict, tmp_path) -> None:
    figures = prove(built["lm_cfg"], built["compression_cfg"], built["lm_state"],
                    built["compression"].state_dict(), built["lm"], built["compression"],
                    _text_encoder(), tmp_path / "transformers", frames=20)
    print(figures)
    assert figures["encodec_decode_max_abs_diff"] <= 1e-4
    assert figures["encodec_encode_identical_codes"] == 1.0
    assert figures["lm_logits_max_abs_diff"] <= 1e-4
    assert figures["greedy_identical_frames"] == figures["greedy_frames"] == 20
    assert figures["greedy_identical_frames_no_guidance"] == 20
    assert figures["greedy_identical_frames_other_text"] == 20
    assert figures["other_text_changes_codes"] is True


STEREO = ["channels=2", "transformer_lm.n_q=8", "codebooks_pattern.delay.delays=[0,0,1,1,2,2,3,3]",
          "+interleave_stereo_codebooks={use:true,per_timestep:false}"]


def test_stereo_is_equivalent_in_transformers(built: dict, tmp_path) -> None:
    """A stereo LM (codebooks L0, R0, L1, R1... over the mono EnCodec): transformers'
    audio_channels=2, generation decoding each channel's codebooks with the mono EnCodec."""
    from audiocraft.models import builders

    torch.manual_seed(0)
    lm_cfg = compose_xp_config("musicgen", [*LM_OVERRIDES, *STEREO])
    lm = builders.get_lm_model(lm_cfg).eval()
    lm_state = {k: v for k, v in lm.state_dict().items() if not k.endswith(".embed.weight")}
    assert refusals(_as_t5(lm_cfg), built["compression_cfg"]) == []
    figures = prove(_as_t5(lm_cfg), built["compression_cfg"], lm_state,
                    built["compression"].state_dict(), lm, built["compression"],
                    _text_encoder(), tmp_path / "transformers", frames=20)
    config = json.loads((tmp_path / "transformers" / "config.json").read_text())
    assert (config["decoder"]["audio_channels"], config["decoder"]["num_codebooks"],
            config["audio_encoder"]["audio_channels"]) == (2, 8, 1)
    assert figures["lm_logits_max_abs_diff"] <= 1e-4
    assert figures["greedy_identical_frames"] == figures["greedy_frames"] == 20
    assert figures["greedy_identical_frames_other_text"] == 20
    assert figures["other_text_changes_codes"] is True


def test_a_model_that_ignores_its_text_fails_the_conditioning_check(built: dict,
                                                                    tmp_path) -> None:
    """What transformers 4.48-4.57's MusicgenMelody.generate did (all conditioning dropped,
    logits still right): the same codes for any text, which the proof sees."""
    from transformers import MusicgenForConditionalGeneration

    from audiocraft_ext.transformers_format.equivalence import lm_figures, load_strictly

    prove(built["lm_cfg"], built["compression_cfg"], built["lm_state"],
          built["compression"].state_dict(), built["lm"], built["compression"],
          _text_encoder(), tmp_path / "transformers", frames=20)
    model = load_strictly(MusicgenForConditionalGeneration, tmp_path / "transformers")
    generate = model.generate

    def deaf(input_ids=None, **kwargs):  # every prompt replaced by the same tokens
        return generate(input_ids=torch.ones_like(input_ids), **kwargs)

    model.generate = deaf
    figures = lm_figures(built["lm"], model, "description", 3.0, frames=20)
    assert figures["lm_logits_max_abs_diff"] <= 1e-4  # a logits check cannot see it
    assert figures["other_text_changes_codes"] is False


LM_REFUSALS = [  # (dotted key, value that transformers' Musicgen cannot represent, words)
    ("codebooks_pattern.modeling", "parallel", "codebooks pattern 'parallel'"),
    ("codebooks_pattern.delay.delays", [0, 2, 4, 6], "delay pattern other than"),
    ("transformer_lm.card", 400, "card 400: not a power of two"),
    ("transformer_lm.positional_embedding", "rope", "positional_embedding is 'rope'"),
    ("transformer_lm.xpos", True, "xpos is True"),
    ("transformer_lm.bias_attn", True, "bias_attn is True"),
    ("transformer_lm.bias_ff", True, "bias_ff is True"),
    ("transformer_lm.bias_proj", True, "bias_proj is True"),
    ("transformer_lm.norm_first", False, "norm_first is False"),
    ("transformer_lm.norm", "rms_norm", "norm is 'rms_norm'"),
    ("transformer_lm.layer_scale", 0.1, "layer_scale is 0.1"),
    ("transformer_lm.qk_layer_norm", True, "qk_layer_norm is True"),
    ("transformer_lm.kv_repeat", 2, "kv_repeat is 2"),
    ("transformer_lm.past_context", 10, "past_context is 10"),
    ("fuser.cross", [], "fuser.cross is not [description]"),
    ("transformer_lm.activation", "swiglu", "activation 'swiglu'"),
    ("transformer_lm.two_step_cfg", True, "two_step_cfg is True"),
    ("solver", "magnet", "solver 'magnet'"),
    ("lm_model", "transformer_lm_magnet", "lm_model 'transformer_lm_magnet'"),
    ("channels", 2, "channels 2: transformers' Musicgen holds mono or stereo with interleaved"),
    ("conditioners.description.model", "lut", "is 'lut': only T5 maps"),
    ("conditioners.description.model", "chroma_stem", "a melody conditioner with T5 text maps"),
    ("conditioners.description.model", "clap", "is 'clap'"),
    ("conditioners.description.t5.finetune", True, "a fine-tuned T5"),
    ("fuser.prepend", ["description"], "fuser.prepend is not empty"),
    ("fuser.cross_attention_pos_emb", True, "cross_attention_pos_emb"),
]
COMPRESSION_REFUSALS = [
    ("rvq.bins", 400, "rvq.bins 400 differs from the LM's card 512"),
    ("rvq.n_q", 2, "the LM uses 4 codebooks, the EnCodec has 2"),
    ("seanet.norm", "time_group_norm", "seanet.norm is 'time_group_norm'"),
    ("seanet.lstm", 0, "without LSTM"),
    ("seanet.activation", "GELU", "seanet.activation is 'GELU'"),
    ("encodec.renormalize", True, "encodec.renormalize is True"),
    ("seanet.disable_norm_outer_blocks", 1, "disable_norm_outer_blocks is 1"),
    ("compression_model", "dac", "compression_model is 'dac'"),
]


def _with(cfg: DictConfig, key: str, new: object) -> DictConfig:
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, key, new, force_add=True)
    return changed


@pytest.mark.parametrize(("key", "new", "words"), LM_REFUSALS, ids=[r[0] for r in LM_REFUSALS])
def test_lm_feature_is_refused(built: dict, key: str, new: object, words: str) -> None:
    found = refusals(_with(built["lm_cfg"], key, new), built["compression_cfg"])
    assert any(words in reason for reason in found), found


@pytest.mark.parametrize(("key", "new", "words"), COMPRESSION_REFUSALS,
                         ids=[r[0] for r in COMPRESSION_REFUSALS])
def test_encodec_feature_is_refused(built: dict, key: str, new: object, words: str) -> None:
    found = refusals(built["lm_cfg"], _with(built["compression_cfg"], key, new))
    assert any(words in reason for reason in found), found


def test_bandwidth_that_no_stack_agrees_on_is_refused(built: dict) -> None:
    # 8-bit codebooks: 4.44 counts 10 bits each, so no bandwidth gives 4 quantizers on both
    lm_cfg = _with(built["lm_cfg"], "transformer_lm.card", 256)
    found = refusals(lm_cfg, _with(built["compression_cfg"], "rvq.bins", 256))
    assert found == ["no target bandwidth gives 4 quantizers of 256 entries on both "
                     "transformers 4.44 (10 bits per codebook) and 5.x (log2 of the size)"]


def test_mapping_refuses_and_drops_nothing(built: dict) -> None:
    from audiocraft_ext.transformers_format.mapping import checked_decoder, decoder_state

    with pytest.raises(ValueError, match="codebooks pattern 'parallel'"):
        checked_decoder(_with(built["lm_cfg"], "codebooks_pattern.modeling", "parallel"),
                        built["compression_cfg"], built["lm_state"])
    with pytest.raises(ValueError, match="condition_provider.conditioners.description.embed"):
        decoder_state(built["lm"].state_dict())  # the LUT's table has no place


@pytest.mark.parametrize("causal", [False, True])
def test_encodec_variants_are_equivalent(causal: bool, tmp_path) -> None:
    from audiocraft.models import builders
    from transformers import EncodecConfig, EncodecModel

    from audiocraft_ext.transformers_format.equivalence import (
        encodec_figures,
        load_strictly,
        write_folder,
    )
    from audiocraft_ext.transformers_format.mapping import encodec_config_kwargs, encodec_state

    torch.manual_seed(2)
    cfg = compose_xp_config("encodec", [f"rvq.bins={CARD}", f"encodec.causal={causal}",
                                        "seanet.ratios=[8,5,4,2]", "sample_rate=16000"])
    compression = builders.get_compression_model(cfg)
    compression.train()
    compression(torch.randn(2, 1, 16000))
    compression.eval()
    write_folder(tmp_path, EncodecConfig(**encodec_config_kwargs(cfg, 4)),
                 encodec_state(compression.state_dict(), 4))
    figures = encodec_figures(compression, load_strictly(EncodecModel, tmp_path), 4)
    assert figures["encodec_decode_max_abs_diff"] <= 1e-4
    assert figures["encodec_encode_identical_codes"] == 1.0


def test_greedy_codes_must_agree_early_and_may_part_late():
    """Past STRICT_GREEDY_FRAMES a near-tie may part the stacks; before, nothing may."""
    from audiocraft_ext.transformers_format.equivalence import first_difference
    from audiocraft_ext.transformers_format.files import STRICT_GREEDY_FRAMES, greedy_agrees

    codes = torch.zeros(1, 4, 300, dtype=torch.long)
    late, early = codes.clone(), codes.clone()
    late[0, 2, 280:] = 1
    early[0, 3, 7] = 1
    assert first_difference([(codes, codes)]) is None
    assert first_difference([(codes, codes), (codes, late)]) == 280
    assert first_difference([(codes, late), (codes, early)]) == 7
    assert first_difference([(codes, None)]) == 0
    assert greedy_agrees(None, 300) and greedy_agrees(280, 300)
    assert not greedy_agrees(7, 300) and not greedy_agrees(STRICT_GREEDY_FRAMES - 1, 300)
    assert not greedy_agrees(19, 20)  # a proof shorter than the window: every frame
