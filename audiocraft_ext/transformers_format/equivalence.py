"""Proof that a release written in transformers' format computes what AudioCraft computes.

The transformers models are loaded from folders written the way a release writes them
(``config.json`` + ``model.safetensors``) through ``from_pretrained``, so the proof covers
transformers' own loading (4.44 reads ``weight_g``/``weight_v``; 5.x renames them), and a key
that is missing or unexpected fails it. Figures come back as a dict for the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .mapping import checked_decoder, checked_encodec, musicgen_state, value

# computed by transformers at construction (4.44 keeps it as a parameter), never written
COMPUTED_KEYS = ("embed_positions.weights",)


def write_folder(folder: Path, config: Any, state: Mapping[str, torch.Tensor]) -> None:
    """``config.json`` and ``model.safetensors``: the weights part of transformers' layout."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_file(dict(state), str(folder / "model.safetensors"), metadata={"format": "pt"})


def text_encoder_config(text_encoder: Any) -> dict[str, Any]:
    """The T5's config for ``MusicgenConfig``, without where it was loaded from (a local
    folder's path would travel with the release)."""
    config = text_encoder.config.to_dict()
    config.pop("_name_or_path", None)
    return config


def load_strictly(model_class: Any, folder: Path) -> Any:
    """``model_class.from_pretrained(folder)``; raises ``ValueError`` unless every key loaded
    and every weight was used."""
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.endswith(COMPUTED_KEYS)]
    wrong = {"missing": missing, "unexpected": list(info["unexpected_keys"]),
             "mismatched": list(info["mismatched_keys"])}
    if any(wrong.values()):
        raise ValueError(f"{model_class.__name__} did not load strictly: {wrong}")
    return model.eval()


def encodec_figures(audiocraft_model: Any, model: Any, n_q: int,
                    frames: int = 50, seed: int = 0) -> dict[str, float]:
    """Decode the same random codes and encode the same random audio with both models."""
    generator = torch.Generator().manual_seed(seed)
    card = model.config.codebook_size
    codes = torch.randint(0, card, (1, n_q, frames), generator=generator)
    hop = int(torch.tensor(model.config.upsampling_ratios).prod())
    audio = 0.1 * torch.randn(1, model.config.audio_channels, frames * hop, generator=generator)
    with torch.no_grad():
        ours = audiocraft_model.decode(codes)
        theirs = model.decode(codes[None], [None]).audio_values
        our_codes = audiocraft_model.encode(audio)[0][:, :n_q]
        their_codes = model.encode(audio, bandwidth=model.config.target_bandwidths[0])
        their_codes = their_codes.audio_codes[0]
    same_shape = our_codes.shape == their_codes.shape
    return {
        "encodec_decode_max_abs_diff": float((ours - theirs).abs().max()),
        "encodec_encode_identical_codes": float(
            (our_codes == their_codes).float().mean()) if same_shape else 0.0,
    }


def _cross_condition(lm: Any, attribute: str, hidden: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # what audiocraft's T5Conditioner returns for T5's hidden states: projected, padding zeroed
    projection = lm.condition_provider.conditioners[attribute].output_proj
    return projection(hidden) * mask[..., None], mask


class _FixedConditions(torch.nn.Module):
    """Stands in for audiocraft's condition provider during ``generate``: the given condition
    for the prompts, zeros with an empty mask for the classifier-free-guidance null half (what
    audiocraft's T5Conditioner gives an empty description)."""

    def __init__(self, attribute: str, condition: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.attribute, self.condition = attribute, condition

    def tokenize(self, conditions: list) -> list:
        return conditions

    def forward(self, conditions: list) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        embeds, mask = self.condition
        assert len(conditions) == 2 * len(embeds), "expected prompts then their null halves"
        return {self.attribute: (torch.cat([embeds, torch.zeros_like(embeds)]),
                                 torch.cat([mask, torch.zeros_like(mask)]))}


@contextmanager
def _conditions_given(lm: Any, provider: torch.nn.Module) -> Iterator[None]:
    original = lm.condition_provider
    lm.condition_provider = provider
    try:
        yield
    finally:
        lm.condition_provider = original


@contextmanager
def _codes_captured(model: Any) -> Iterator[list[torch.Tensor]]:
    """Record the codes transformers' ``generate`` hands its audio decoder (it returns audio)."""
    captured: list[torch.Tensor] = []
    decode = model.audio_encoder.decode

    def recording(codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(codes)
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = recording
    try:
        yield captured
    finally:
        del model.audio_encoder.decode  # the instance attribute; the class method shows again


def lm_figures(lm: Any, model: Any, attribute: str, cfg_coef: float,
               frames: int = 20, text_tokens: int = 8, seed: int = 0) -> dict[str, Any]:
    """Logits on the same codes and text, then greedy decoding of ``frames`` frames by
    audiocraft's LM and transformers' ``MusicgenForConditionalGeneration`` (whose text encoder
    produces the conditioning of both): with the XP's classifier-free guidance, without
    guidance, and for another text, which must change the codes in both (a stack that dropped
    its conditioning would give the same codes for both texts)."""
    generator = torch.Generator().manual_seed(seed)
    decoder = model.decoder.config
    card, n_q = decoder.vocab_size, decoder.num_codebooks
    vocab = model.text_encoder.config.vocab_size
    texts = [torch.randint(1, vocab, (1, text_tokens), generator=generator) for _ in range(2)]
    mask = torch.ones_like(texts[0])
    sequence = torch.randint(0, card + 1, (1, n_q, frames), generator=generator)  # + special
    with torch.no_grad():
        conditions = [_cross_condition(lm, attribute, model.text_encoder(
            input_ids=ids, attention_mask=mask).last_hidden_state, mask) for ids in texts]
        ours = lm(sequence, [], {attribute: conditions[0]})
        theirs = model(input_ids=texts[0], attention_mask=mask,
                       decoder_input_ids=sequence.reshape(n_q, frames)).logits
        logits_diff = float((ours - theirs.reshape(ours.shape)).abs().max())
        runs = {"guided": (0, cfg_coef), "no_guidance": (0, 1.0), "other_text": (1, cfg_coef)}
        codes = {name: _greedy_codes(lm, model, attribute, conditions[i], texts[i], mask, coef,
                                     frames) for name, (i, coef) in runs.items()}
    identical = {name: _identical_frames(*pair) for name, pair in codes.items()}
    (ours_a, theirs_a), (ours_b, theirs_b) = codes["guided"], codes["other_text"]
    changed = not torch.equal(ours_a, ours_b) and theirs_a is not None \
        and theirs_b is not None and not torch.equal(theirs_a, theirs_b)
    return {"lm_logits_max_abs_diff": logits_diff, "greedy_frames": frames,
            "greedy_identical_frames": identical["guided"],
            "greedy_guidance_scale": cfg_coef,
            "greedy_identical_frames_no_guidance": identical["no_guidance"],
            "greedy_identical_frames_other_text": identical["other_text"],
            "other_text_changes_codes": changed}


def _identical_frames(ours: torch.Tensor, theirs: torch.Tensor | None) -> int:
    """Frames whose codes (every codebook) are equal in both stacks."""
    if theirs is None or theirs.shape != ours.shape:
        return 0
    return int((ours == theirs).all(dim=1).all(dim=0).sum())


def _greedy_codes(lm: Any, model: Any, attribute: str,
                  condition: tuple[torch.Tensor, torch.Tensor], input_ids: torch.Tensor,
                  mask: torch.Tensor, cfg_coef: float, frames: int,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The greedy codes [batch, n_q, frames] of audiocraft's LM and of transformers' model
    (None when it decoded no audio)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    decoder = model.decoder.config
    card, channels = decoder.vocab_size, decoder.audio_channels
    with _conditions_given(lm, _FixedConditions(attribute, condition)):
        ours = lm.generate(conditions=[ConditioningAttributes(text={attribute: "given"})],
                           max_gen_len=frames, use_sampling=False, cfg_coef=cfg_coef,
                           two_step_cfg=False)
    with _codes_captured(model) as captured:
        # the delay pattern needs (codebooks per channel - 1) steps beyond the frames
        model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                       guidance_scale=cfg_coef,
                       max_new_tokens=frames + decoder.num_codebooks // channels - 1,
                       decoder_start_token_id=card, pad_token_id=card, bos_token_id=card)
    if len(captured) != channels:  # generate stopped before decoding any audio
        return ours, None
    # [chunks, batch, n_q, frames] -> [batch, n_q, frames]; stereo decodes the left channel's
    # codebooks (0, 2, 4...) then the right's (1, 3, 5...): interleaved back as AudioCraft's
    return ours, torch.stack([codes[0] for codes in captured], dim=2).flatten(1, 2)


def prove(lm_cfg: Any, compression_cfg: Any, lm_state: Mapping[str, Any],
          compression_state: Mapping[str, Any], lm: Any,
          compression_model: Any, text_encoder: Any, folder: Path,
          frames: int = 20) -> dict[str, float]:
    """Write the release's transformers folder under ``folder``, load it strictly and measure
    it against audiocraft's ``lm`` and ``compression_model`` (built from the same release).
    ``text_encoder`` is a transformers ``T5EncoderModel`` standing for the LM's T5."""
    import transformers

    encodec_kwargs, encodec = checked_encodec(lm_cfg, compression_cfg, compression_state)
    decoder_kwargs, decoder, projection = checked_decoder(lm_cfg, compression_cfg, lm_state)
    config = transformers.MusicgenConfig(
        text_encoder=text_encoder_config(text_encoder),
        audio_encoder=transformers.EncodecConfig(**encodec_kwargs).to_dict(),
        decoder=transformers.MusicgenDecoderConfig(**decoder_kwargs).to_dict())
    text_state = {k: v.detach().clone().contiguous() for k, v in
                  text_encoder.state_dict().items()}
    write_folder(folder, config, musicgen_state(decoder, projection, encodec, text_state))
    model = load_strictly(transformers.MusicgenForConditionalGeneration, folder)
    attribute = next(iter(value(lm_cfg, "fuser.cross")))
    coef = float(value(lm_cfg, "classifier_free_guidance.inference_coef"))
    return {**encodec_figures(compression_model, model.audio_encoder,
                              decoder_kwargs["num_codebooks"] // decoder_kwargs["audio_channels"]),
            **lm_figures(lm, model, attribute, coef, frames=frames)}
