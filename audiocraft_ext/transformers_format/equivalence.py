"""Proof that a release written in transformers' format computes what AudioCraft computes.

The transformers models are loaded from folders written the way a release writes them
(``config.json`` + ``model.safetensors``) through ``from_pretrained``, so the proof covers
transformers' own loading (4.44 reads ``weight_g``/``weight_v``; 5.x renames them), and a key
that is missing or unexpected fails it. Figures come back as a dict for the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .mapping import checked_decoder, checked_encodec, musicgen_state, value

# frames over which the logits must agree to a fixed bound (see logit_figures)
EARLY_FRAMES = 20
# computed by transformers at construction (4.44 to 4.48 keep it as a parameter): a release
# writes it (files.POSITIONS_KEY), a folder written otherwise may lack it
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
def codes_captured(model: Any) -> Iterator[list[torch.Tensor]]:
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
        logits = logit_figures(ours, theirs.reshape(ours.shape))
        runs = {"guided": (0, cfg_coef), "no_guidance": (0, 1.0), "other_text": (1, cfg_coef)}
        codes = {name: _greedy_codes(lm, model, attribute, conditions[i], texts[i], mask, coef,
                                     frames) for name, (i, coef) in runs.items()}
    identical = {name: _identical_frames(*pair) for name, pair in codes.items()}
    changed = _changed(codes["guided"], codes["other_text"])
    return {**logits, "greedy_frames": frames,
            "greedy_identical_frames": identical["guided"],
            "greedy_guidance_scale": cfg_coef,
            "greedy_identical_frames_no_guidance": identical["no_guidance"],
            "greedy_identical_frames_other_text": identical["other_text"],
            "greedy_first_difference": first_difference(codes.values()),
            "other_text_changes_codes": changed}


def logit_figures(ours: torch.Tensor, theirs: torch.Tensor,
                  early: int = EARLY_FRAMES) -> dict[str, float]:
    """Logits [batch, n_q, frames, card] of both stacks compared: the largest difference over
    the first ``early`` frames and over all, the largest relative to the logits' scale (the
    largest magnitude), and how often both pick the same code. The two stacks round their
    sinusoidal position tables differently (float32), a difference that grows with the
    position: the early figure is the one a fixed bound holds for at any length."""
    diff = (ours - theirs).abs()
    return {
        "lm_logits_max_abs_diff": float(diff.max()),
        "lm_logits_max_abs_diff_early": float(diff[:, :, :early].max()),
        "lm_logits_early_frames": min(early, ours.shape[2]),
        "lm_logits_max_rel_diff": float(diff.max() / ours.abs().max().clamp_min(1e-30)),
        "lm_logits_argmax_agreement": float(
            (ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
    }


def first_difference(runs: Iterable[tuple[Any, Any]]) -> int | None:
    """The first frame at which the two stacks' codes part in any run, or None. Past it an
    autoregressive run follows its own codes, so later frames say little."""
    found = None
    for ours, theirs in runs:
        if theirs is None or tuple(theirs.shape) != tuple(ours.shape):
            return 0
        parted = (ours != theirs).reshape(-1, ours.shape[-1]).any(0).nonzero()
        if len(parted):
            found = min(int(parted[0]), found if found is not None else int(parted[0]))
    return found


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
    with codes_captured(model) as captured:
        # the delay pattern needs (codebooks per channel - 1) steps beyond the frames
        model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                       guidance_scale=cfg_coef,
                       max_new_tokens=frames + decoder.num_codebooks // channels - 1,
                       decoder_start_token_id=card, pad_token_id=card, bos_token_id=card,
                       top_k=None)  # greedy: the sampling settings of the file do not apply
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


# Two texts and, besides the validation prompt, melodies to change the conditioning with: the
# first whose chroma (as AudioCraft computes it) differs from the prompt's is used
TEXTS = ("warm lo-fi piano with soft drums", "dark techno with heavy bass")
OTHER_MELODIES_HZ = ((880.0, 110.0), (293.66, 369.99, 440.0, 493.88), (196.0, 246.94, 293.66))


def melody_figures(lm: Any, model: Any, processor: Any, chroma: str, text: str,
                   cfg_coef: float, sample_rate: int, frames: int = 20,
                   text_tokens: int = 8, seed: int = 0) -> dict[str, Any]:
    """A MusicGen-melody against transformers' ``MusicgenMelodyForConditionalGeneration``:
    the chroma of the same demucs stems (AudioCraft's conditioner separates them; transformers'
    feature extractor does not run demucs, it is given them), logits on the same codes, text
    and melody, then greedy decoding through both stacks' own conditioning (AudioCraft's
    condition provider; transformers' processor): with the XP's guidance, without, for another
    text and for another melody, each of which must change the codes of both."""

    from ..validation.lm import melody_prompt

    conditioner = lm.condition_provider.conditioners[chroma]
    # as MusicGen.get_pretrained sets them (loaders.load_lm_model does not)
    conditioner.match_len_on_eval, conditioner._use_masking = True, False
    seconds = 2.0
    melody = melody_prompt(sample_rate, seconds)
    with torch.no_grad(), _same_stems(conditioner):
        stems = conditioner._get_stemmed_wav(melody[None], sample_rate)
        ours_chroma = conditioner._extract_chroma(stems)
        theirs_chroma = processor.feature_extractor(
            stems[:, 0], sampling_rate=sample_rate, return_tensors="pt").input_features
        frames_compared = min(ours_chroma.shape[1], theirs_chroma.shape[1])
        chroma_identical = int((ours_chroma[:, :frames_compared]
                                == theirs_chroma[:, :frames_compared]).all(-1).sum())
        logits = _melody_logits(lm, model, conditioner, chroma, text, melody,
                                theirs_chroma, sample_rate, frames, text_tokens, seed)
        other = next((m for m in (_tones(hz, sample_rate, seconds) for hz in OTHER_MELODIES_HZ)
                      if not torch.equal(conditioner._extract_chroma(
                          conditioner._get_stemmed_wav(m[None], sample_rate)), ours_chroma)),
                     None)
        runs = {"guided": (TEXTS[0], melody, cfg_coef), "no_guidance": (TEXTS[0], melody, 1.0),
                "other_text": (TEXTS[1], melody, cfg_coef)}
        if other is not None:
            runs["other_melody"] = (TEXTS[0], other, cfg_coef)
        codes = {name: _melody_greedy(lm, model, processor, conditioner, chroma, text, prompt,
                                      wav, coef, sample_rate, frames)
                 for name, (prompt, wav, coef) in runs.items()}
    figures: dict[str, Any] = {
        "chroma_frames": frames_compared, "chroma_identical_frames": chroma_identical,
        **logits, "greedy_frames": frames,
        "greedy_guidance_scale": cfg_coef,
        "greedy_identical_frames": _identical_frames(*codes["guided"]),
        "greedy_identical_frames_no_guidance": _identical_frames(*codes["no_guidance"]),
        "greedy_identical_frames_other_text": _identical_frames(*codes["other_text"]),
        "other_text_changes_codes": _changed(codes["guided"], codes["other_text"])}
    figures["greedy_first_difference"] = first_difference(codes.values())
    if "other_melody" in codes:
        figures.update({
            "greedy_identical_frames_other_melody": _identical_frames(*codes["other_melody"]),
            "other_melody_changes_codes": _changed(codes["guided"], codes["other_melody"])})
    return figures


@contextmanager
def _same_stems(conditioner: Any) -> Iterator[None]:
    """demucs separates with a random time shift: within the block, the conditioner separates
    each melody once, alone, so that AudioCraft's own conditioning (a batch of the melody and
    classifier-free guidance's null one) and what transformers is given
    (``conditioner._get_stemmed_wav(melody[None])``) are the same stems."""
    separated: list[tuple[torch.Tensor, torch.Tensor]] = []
    separate = conditioner._get_stemmed_wav

    def one(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        for seen, stems in separated:
            if seen.shape == wav.shape and torch.equal(seen, wav):
                return stems
        stems = separate(wav, sample_rate)
        separated.append((wav.clone(), stems))
        return stems

    def once(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return torch.cat([one(item[None], sample_rate) for item in wav])

    conditioner._get_stemmed_wav = once
    try:
        yield
    finally:
        del conditioner._get_stemmed_wav  # the instance attribute; the method shows again


def _changed(first: tuple[torch.Tensor, torch.Tensor | None],
             second: tuple[torch.Tensor, torch.Tensor | None]) -> bool:
    """Whether both stacks' codes differ between two runs."""
    (ours_a, theirs_a), (ours_b, theirs_b) = first, second
    return not torch.equal(ours_a, ours_b) and theirs_a is not None \
        and theirs_b is not None and not torch.equal(theirs_a, theirs_b)


def _tones(freqs_hz: tuple[float, ...], sample_rate: int, seconds: float) -> torch.Tensor:
    """[1, samples]: each frequency in turn, as sine tones."""
    total = int(seconds * sample_rate)
    t = torch.arange(total, dtype=torch.float32) / sample_rate
    note = torch.clamp(torch.arange(total) * len(freqs_hz) // total, max=len(freqs_hz) - 1)
    return (0.5 * torch.sin(2 * torch.pi * torch.tensor(freqs_hz)[note] * t))[None]


def _wav_condition(wav: torch.Tensor, sample_rate: int) -> Any:
    from audiocraft.modules.conditioners import WavCondition

    return WavCondition(wav[None], torch.tensor([wav.shape[-1]]), sample_rate=[sample_rate],
                        path=[None], seek_time=[0.0])


def _melody_logits(lm: Any, model: Any, conditioner: Any, chroma: str, text: str,
                   melody: torch.Tensor, input_features: torch.Tensor, sample_rate: int,
                   frames: int, text_tokens: int, seed: int) -> dict[str, float]:
    """Logits of both on the same codes, text (transformers' T5 states) and melody
    (:func:`logit_figures`)."""
    generator = torch.Generator().manual_seed(seed)
    decoder = model.decoder.config
    card, n_q = decoder.vocab_size, decoder.num_codebooks
    input_ids = torch.randint(1, model.text_encoder.config.vocab_size, (1, text_tokens),
                              generator=generator)
    mask = torch.ones_like(input_ids)
    sequence = torch.randint(0, card + 1, (1, n_q, frames), generator=generator)
    hidden = model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    text_condition = _cross_condition(lm, text, hidden, mask)
    melody_condition = conditioner(conditioner.tokenize(_wav_condition(melody, sample_rate)))
    # the condition provider's order (text, then wav): the fuser prepends the wav's first
    ours = lm(sequence, [], {text: text_condition, chroma: melody_condition})
    theirs = model(input_ids=input_ids, attention_mask=mask, input_features=input_features,
                   decoder_input_ids=sequence.reshape(n_q, frames)).logits
    # transformers' logits cover the prepended conditions too: the codes' are the last
    return logit_figures(ours, theirs.reshape(1, n_q, -1, card)[:, :, -frames:])


def _melody_greedy(lm: Any, model: Any, processor: Any, conditioner: Any, chroma: str,
                   text: str, prompt: str, wav: torch.Tensor, cfg_coef: float,
                   sample_rate: int, frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy codes of both for ``prompt`` and the melody ``wav``, each conditioned its own
    way; transformers is given the stems AudioCraft's conditioner separated."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    decoder = model.decoder.config
    card = decoder.vocab_size
    attributes = ConditioningAttributes(text={text: prompt},
                                        wav={chroma: _wav_condition(wav, sample_rate)})
    ours = lm.generate(conditions=[attributes], max_gen_len=frames, use_sampling=False,
                       cfg_coef=cfg_coef, two_step_cfg=False)
    stems = conditioner._get_stemmed_wav(wav[None], sample_rate)
    features = processor.feature_extractor(stems[:, 0], sampling_rate=sample_rate,
                                           return_tensors="pt").input_features
    tokens = processor.tokenizer([prompt], return_tensors="pt")
    with codes_captured(model) as captured:
        model.generate(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                       input_features=features, do_sample=False, guidance_scale=cfg_coef,
                       max_new_tokens=frames + decoder.num_codebooks // decoder.audio_channels
                       - 1, decoder_start_token_id=card, pad_token_id=card, bos_token_id=card)
    if len(captured) != decoder.audio_channels:
        return ours, None
    return ours, torch.stack([codes[0] for codes in captured], dim=2).flatten(1, 2)
