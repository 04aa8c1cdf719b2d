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

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from audiocraft_ext.demo import compose_xp_config
from audiocraft_ext.transformers_equivalence import prove
from audiocraft_ext.transformers_format import refusals

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
