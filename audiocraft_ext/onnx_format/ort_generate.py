"""Greedy MusicGen generation with ONNX Runtime (numpy, no torch), over a release's
``onnx/`` folder: ``text_encoder.onnx``, ``decoder_model_merged.onnx`` (the KV-cache branch
chosen by ``use_cache_branch``) and ``encodec_decode.onnx``, as Optimum and Transformers.js lay
them out. It decodes as transformers' ``MusicgenForConditionalGeneration.generate(do_sample=
False)`` does: the text encoder's states (and zeros with an empty mask for classifier-free
guidance's unconditional half), the decoder start token per codebook, the delay pattern built
with the start token as padding, guidance as ``uncond + (cond - uncond) * scale``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..writing.release_format import ONNX_GRAPHS


def delay_pattern_mask(codebooks: int, length: int, pad: int) -> np.ndarray:
    """[codebooks, length]: -1 where a code is generated, ``pad`` where the delay pattern pads
    (the first k+1 steps of codebook k, and its last codebooks-1-k), as transformers builds it."""
    mask = np.full((codebooks, length), -1, dtype=np.int64)
    if length < 2 * codebooks - 1:  # transformers leaves such a short pattern unmasked
        return mask
    step = np.arange(length)[None, :]
    book = np.arange(codebooks)[:, None]
    mask[(step <= book) | (step >= length - codebooks + 1 + book)] = pad
    return mask


class OrtMusicgen:
    """The three sessions of one ``onnx/`` folder, and the release's configs."""

    def __init__(self, onnx_dir: Path, release: Path, suffix: str = "", threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.sessions = {name: ort.InferenceSession(str(onnx_dir / f"{name}{suffix}.onnx"),
                                                    options, providers=["CPUExecutionProvider"])
                         for name in ONNX_GRAPHS}
        decoder = json.loads((release / "config.json").read_text())["decoder"]
        generation = json.loads((release / "generation_config.json").read_text())
        self.codebooks = int(decoder["num_codebooks"])
        self.heads = int(decoder["num_attention_heads"])
        self.head_dim = int(decoder["hidden_size"]) // self.heads
        self.start = int(generation["decoder_start_token_id"])
        self.pad = int(generation["pad_token_id"])
        merged = self.sessions["decoder_model_merged"]
        self.past_names = [i.name for i in merged.get_inputs()
                           if i.name.startswith("past_key_values.")]
        self.out_names = [o.name for o in merged.get_outputs()]

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.sessions["text_encoder"].run(["last_hidden_state"], {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64)})[0]

    def decoder_step(self, ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
                     past: dict[str, np.ndarray] | None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One call of the merged decoder: without ``past``, its first branch (empty caches
        given); then its cache branch, which returns the cross-attention cache only once."""
        feeds: dict[str, Any] = {"input_ids": ids, "encoder_hidden_states": states,
                                 "encoder_attention_mask": mask,
                                 "use_cache_branch": np.array([past is not None])}
        for name in self.past_names:
            feeds[name] = past[name] if past is not None else np.zeros(
                (states.shape[0], self.heads, 0, self.head_dim), dtype=np.float32)
        outputs = dict(zip(self.out_names,
                           self.sessions["decoder_model_merged"].run(self.out_names, feeds),
                           strict=True))
        cache = {name: past[name] if past is not None and ".encoder." in name
                 else outputs[name.replace("past_key_values.", "present.")]
                 for name in self.past_names}
        return outputs["logits"], cache

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, steps: int,
                 guidance_scale: float | None = None,
                 fed: list[np.ndarray] | None = None) -> np.ndarray:
        """Greedy codes [1, batch, codebooks, steps - codebooks + 1]; ``fed`` collects the
        decoder's input at each step."""
        batch, books = input_ids.shape[0], self.codebooks
        states = self.encode_text(input_ids, attention_mask)
        mask = attention_mask.astype(np.int64)
        scale = 1.0 if guidance_scale is None else float(guidance_scale)
        guided = scale > 1
        if guided:
            states = np.concatenate([states, np.zeros_like(states)])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        pattern = np.tile(delay_pattern_mask(books, steps + 1, self.start), (batch, 1))
        sequence = np.full((batch * books, 1), self.start, dtype=np.int64)
        past = None
        for _ in range(steps):
            ids = np.where(pattern[:, :sequence.shape[1]] == -1, sequence,
                           pattern[:, :sequence.shape[1]])[:, -1:]
            if guided:
                ids = np.concatenate([ids, ids])
            if fed is not None:
                fed.append(ids)
            logits, past = self.decoder_step(ids, states, mask, past)
            scores = logits[:, -1].astype(np.float32)
            if guided:
                cond, uncond = scores[:batch * books], scores[batch * books:]
                scores = uncond + (cond - uncond) * scale
            sequence = np.concatenate([sequence, scores.argmax(-1)[:, None]], axis=1)
        codes = np.where(pattern == -1, sequence, pattern)
        # what transformers keeps: every code but the padding token's (by value, as it does)
        return codes[codes != self.pad].reshape(batch, books, -1)[None]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.sessions["encodec_decode"].run(
            ["audio_values"], {"audio_codes": codes.astype(np.int64)})[0]
