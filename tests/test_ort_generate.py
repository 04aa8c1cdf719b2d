"""The ONNX Runtime greedy loop builds the delay pattern exactly as transformers'
``MusicgenForCausalLM.build_delay_pattern_mask`` does (the loop itself, over real graphs, is
proven in tests/test_onnx.py)."""

import pytest
import torch
import transformers

from audiocraft_ext.onnx_format.ort_generate import delay_pattern_mask

PAD = 9


@pytest.mark.parametrize("codebooks", [1, 2, 4])
def test_the_delay_pattern_is_transformers_one(codebooks):
    config = transformers.MusicgenDecoderConfig(
        vocab_size=PAD, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, ffn_dim=8,
        num_codebooks=codebooks)
    decoder = transformers.MusicgenForCausalLM(config)
    start = torch.full((codebooks, 1), PAD, dtype=torch.long)  # the start token, per codebook
    for length in range(1, 3 * codebooks + 3):
        _, theirs = decoder.build_delay_pattern_mask(start, pad_token_id=PAD, max_length=length)
        ours = delay_pattern_mask(codebooks, length, PAD)
        assert ours.tolist() == theirs.tolist(), (codebooks, length)
