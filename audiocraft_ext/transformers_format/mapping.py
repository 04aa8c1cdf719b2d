"""An AudioCraft MusicGen release in transformers' layout: what cannot be represented, the
configs, and the weight mapping (LM -> ``MusicgenForCausalLM``, EnCodec -> ``EncodecModel``).

Configs are read as written (``${a.b}`` references to other keys are followed, resolvers never
run), so nothing is guessed from names or from this machine. Call :func:`refusals` first: the
mapping functions raise ``ValueError`` on a model that has any.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..untrusted.lazy_tensors import LazyTensor
from ..untrusted.xp_config import literal_value, raw_value

SINUSOID_MAX_PERIOD = 10_000  # the only period transformers' sinusoidal table uses
ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}  # audiocraft name -> transformers ACT2FN name
# transformers 4.44 sizes the quantizer assuming 10 bits per codebook (5.x: log2 of the size)
LEGACY_BITS_PER_CODEBOOK = 10


def value(cfg: DictConfig, key: str) -> Any:
    """The literal at dotted ``key`` (:func:`~audiocraft_ext.untrusted.xp_config.literal_value`)."""
    return literal_value(cfg, key)


def _int(cfg: DictConfig, key: str) -> int | None:
    found = value(cfg, key)
    return found if type(found) is int else None


def _required(cfg: DictConfig, key: str) -> int:
    found = _int(cfg, key)
    if found is None:
        raise ValueError(f"{key} is not a literal integer")
    return found


def _power_of_two(number: int | None) -> bool:
    return number is not None and number > 0 and number & (number - 1) == 0


def audio_channels(lm_cfg: DictConfig) -> int:
    """2 for a stereo MusicGen (AudioCraft's interleave_stereo_codebooks: codebooks L0, R0, L1,
    R1... over a mono EnCodec, transformers' ``audio_channels=2``), else 1."""
    stereo = value(lm_cfg, "channels") == 2 and value(lm_cfg, "interleave_stereo_codebooks.use")
    return 2 if stereo is True else 1


def codec_codebooks(lm_cfg: DictConfig) -> int:
    """How many of the EnCodec's codebooks the LM uses per audio channel."""
    return _required(lm_cfg, "transformer_lm.n_q") // audio_channels(lm_cfg)


# ---- refusals ----

def _lm_refusals(cfg: DictConfig) -> list[str]:
    tf = "transformer_lm"
    reasons = []
    # AudioGen is MusicGen's architecture on sounds: MusicgenForConditionalGeneration holds it
    if value(cfg, "solver") not in ("musicgen", "audiogen") \
            or value(cfg, "lm_model") != "transformer_lm":
        reasons.append(f"solver {value(cfg, 'solver')!r} / lm_model {value(cfg, 'lm_model')!r}:"
                       " only MusicGen's and AudioGen's autoregressive transformer_lm map "
                       "(not MAGNeT)")
    n_q, card = _int(cfg, f"{tf}.n_q"), _int(cfg, f"{tf}.card")
    channels = audio_channels(cfg)
    # transformers delays each channel's k-th codebook by k: stereo's are [0, 0, 1, 1, ...]
    delays = [k // channels for k in range(n_q)] if n_q is not None else None
    if value(cfg, "codebooks_pattern.modeling") != "delay":
        reasons.append(f"codebooks pattern {value(cfg, 'codebooks_pattern.modeling')!r}: "
                       "transformers' Musicgen only has the delay pattern")
    elif n_q is not None and (value(cfg, "codebooks_pattern.delay.delays") != delays
                              or value(cfg, "codebooks_pattern.delay.flatten_first") != 0
                              or value(cfg, "codebooks_pattern.delay.empty_initial") != 0):
        reasons.append(f"delay pattern other than delays {delays}, no flattening, no empty "
                       "initial step: transformers' delay pattern is fixed")
    if not _power_of_two(card):
        reasons.append(f"card {card}: not a power of two (transformers' EnCodec refuses it)")
    for key in ("dim", "num_heads", "num_layers", "hidden_scale"):
        if _int(cfg, f"{tf}.{key}") is None:
            reasons.append(f"{tf}.{key} is not a literal integer")
    if n_q is None:
        reasons.append(f"{tf}.n_q is not a literal integer")
    if value(cfg, "channels") not in (1, 2) or (value(cfg, "channels") == 2 and channels != 2):
        reasons.append(f"channels {value(cfg, 'channels')!r}: transformers' Musicgen holds mono "
                       "or stereo with interleaved codebooks (interleave_stereo_codebooks.use)")
    elif channels == 2 and value(cfg, "interleave_stereo_codebooks.per_timestep") not in (
            None, False):
        reasons.append("interleave_stereo_codebooks.per_timestep: transformers interleaves the "
                       "channels' codebooks, not their time steps")
    elif channels == 2 and n_q is not None and n_q % 2:
        reasons.append(f"{tf}.n_q {n_q}: a stereo LM has two codebooks per EnCodec codebook")
    expected: dict[str, Any] = {
        "positional_embedding": "sin", "xpos": False, "norm_first": True, "norm": "layer_norm",
        "bias_ff": False, "bias_attn": False, "bias_proj": False, "layer_scale": None,
        "qk_layer_norm": False, "qk_layer_norm_cross": False, "kv_repeat": 1,
        "past_context": None, "causal": True, "two_step_cfg": False}
    # transformer_lm.cross_attention is not read: audiocraft's builder turns it on whenever the
    # fuser cross-attends (fuser.cross, checked with the conditioning below)
    for key, wanted in expected.items():
        found = value(cfg, f"{tf}.{key}")
        if found != wanted and not (wanted in (False, None) and found is None):
            reasons.append(f"{tf}.{key} is {found!r}, transformers' Musicgen needs {wanted!r}")
    if value(cfg, f"{tf}.max_period") not in (None, SINUSOID_MAX_PERIOD):
        reasons.append(f"{tf}.max_period is not {SINUSOID_MAX_PERIOD}")
    if value(cfg, f"{tf}.positional_scale") not in (None, 1, 1.0):
        reasons.append(f"{tf}.positional_scale is not 1")
    coef = value(cfg, "classifier_free_guidance.inference_coef")
    if not (type(coef) is int or (type(coef) is float and math.isfinite(coef))):
        reasons.append(f"classifier_free_guidance.inference_coef {coef!r}: transformers' "
                       "guidance scale needs a finite number")
    if value(cfg, f"{tf}.activation") not in ACTIVATIONS:
        reasons.append(f"{tf}.activation {value(cfg, f'{tf}.activation')!r}: "
                       f"only {sorted(ACTIVATIONS)} map")
    return reasons + _conditioning_refusals(cfg)


def _conditioner_names(cfg: DictConfig) -> list[str]:
    conditioners = raw_value(cfg, "conditioners")
    return [str(name) for name in conditioners] if isinstance(conditioners, DictConfig) else []


def melody_attributes(cfg: DictConfig) -> tuple[str, str] | None:
    """``(chroma attribute, text attribute)`` of a MusicGen-melody (a chroma_stem conditioner
    and a T5 one, AudioCraft's chroma2music), else None."""
    kinds = {name: value(cfg, f"conditioners.{name}.model") for name in _conditioner_names(cfg)}
    chroma = [name for name, kind in kinds.items() if kind == "chroma_stem"]
    text = [name for name, kind in kinds.items() if kind == "t5"]
    if len(kinds) != 2 or len(chroma) != 1 or len(text) != 1:
        return None
    return chroma[0], text[0]


def _melody_refusals(cfg: DictConfig, chroma: str, text: str) -> list[str]:
    """What MusicgenMelodyForConditionalGeneration cannot hold of a MusicGen-melody: it
    prepends the projected chroma, then the projected text, to the decoder's input."""
    reasons = []
    # AudioCraft prepends in the condition provider's order, text then wav: the wav's chroma
    # ends up first, as transformers has it
    if value(cfg, "fuser.prepend") not in ([chroma, text], [text, chroma]):
        reasons.append(f"fuser.prepend is not [{chroma}, {text}]: transformers' "
                       "MusicgenMelody prepends the melody and the text")
    for group in ("sum", "cross", "input_interpolate"):
        if value(cfg, f"fuser.{group}"):
            reasons.append(f"fuser.{group} is not empty: transformers' MusicgenMelody only "
                           "prepends")
    stem = f"conditioners.{chroma}.chroma_stem"
    if value(cfg, f"{stem}.argmax") is not True:
        reasons.append(f"{stem}.argmax is not true: transformers' feature extractor keeps the "
                       "strongest chroma bin")
    for key in ("n_chroma", "radix2_exp"):
        if _int(cfg, f"{stem}.{key}") is None:
            reasons.append(f"{stem}.{key} is not a literal integer")
    if value(cfg, f"{stem}.sample_rate") != value(cfg, "sample_rate"):
        reasons.append(f"{stem}.sample_rate differs from the model's sample rate")
    if value(cfg, f"conditioners.{text}.t5.finetune") is not False:
        reasons.append(f"conditioner {text!r}: a fine-tuned T5 (its weights are in the LM "
                       "state) is not mapped")
    if audio_channels(cfg) != 1:
        reasons.append("a stereo MusicGen-melody is not mapped yet")
    return reasons


def _conditioning_refusals(cfg: DictConfig) -> list[str]:
    melody = melody_attributes(cfg)
    if melody is not None:
        return _melody_refusals(cfg, *melody)
    names = _conditioner_names(cfg)
    if len(names) != 1:
        return [f"conditioners {names}: transformers' Musicgen has exactly one text encoder"]
    name = names[0]
    reasons = []
    kind = value(cfg, f"conditioners.{name}.model")
    if kind != "t5":
        reasons.append(f"conditioner {name!r} is {kind!r}: only T5 maps (a melody conditioner "
                       "with T5 text maps to MusicgenMelody; LUT, CLAP have none)")
    elif value(cfg, f"conditioners.{name}.t5.finetune") is not False:
        reasons.append(f"conditioner {name!r}: a fine-tuned T5 (its weights are in the LM "
                       "state) is not mapped")
    for group in ("sum", "prepend", "input_interpolate"):
        if value(cfg, f"fuser.{group}"):
            reasons.append(f"fuser.{group} is not empty: transformers only cross-attends")
    if value(cfg, "fuser.cross") != [name]:
        reasons.append(f"fuser.cross is not [{name}]")
    if value(cfg, "fuser.cross_attention_pos_emb") is not False:
        reasons.append("fuser.cross_attention_pos_emb: transformers adds no positions to the "
                       "text")
    return reasons


def _compression_refusals(cfg: DictConfig, lm_cfg: DictConfig) -> list[str]:
    reasons = []
    expected: dict[str, Any] = {
        "compression_model": "encodec", "encodec.autoencoder": "seanet",
        "encodec.quantizer": "rvq", "encodec.renormalize": False,
        "seanet.norm": "weight_norm", "seanet.activation": "ELU",
        "seanet.disable_norm_outer_blocks": 0, "seanet.decoder.final_activation": None}
    for key, wanted in expected.items():
        if value(cfg, key) != wanted:
            reasons.append(f"EnCodec {key} is {value(cfg, key)!r}, transformers' EncodecModel "
                           f"here needs {wanted!r}")
    if value(cfg, "seanet.activation_params") not in ({"alpha": 1.0}, {"alpha": 1}):
        reasons.append("EnCodec ELU alpha is not 1")
    if value(cfg, "seanet.encoder") or set(value(cfg, "seanet.decoder") or {}) - {
            "trim_right_ratio", "final_activation", "final_activation_params"}:
        reasons.append("EnCodec seanet.encoder/decoder overrides are not mapped")
    if not (_int(cfg, "seanet.lstm") or 0) > 0:
        reasons.append("EnCodec without LSTM: transformers' EncodecModel always has one")
    ints = ("sample_rate", "channels", "seanet.dimension", "seanet.n_filters",
            "seanet.n_residual_layers", "seanet.kernel_size", "seanet.residual_kernel_size",
            "seanet.last_kernel_size", "seanet.dilation_base", "seanet.compress", "rvq.n_q",
            "rvq.bins")
    reasons += [f"EnCodec {key} is not a literal integer" for key in ints
                if _int(cfg, key) is None]
    ratios = value(cfg, "seanet.ratios")
    if not isinstance(ratios, list) or not all(type(r) is int and r > 0 for r in ratios):
        reasons.append("EnCodec seanet.ratios is not a list of positive integers")
    bins, card = _int(cfg, "rvq.bins"), _int(lm_cfg, "transformer_lm.card")
    if bins != card:
        reasons.append(f"EnCodec rvq.bins {bins} differs from the LM's card {card}")
    n_q, rvq_n_q = _int(lm_cfg, "transformer_lm.n_q"), _int(cfg, "rvq.n_q")
    channels = audio_channels(lm_cfg)
    if n_q is not None:
        n_q //= channels  # per channel: a stereo LM codes each channel with the mono EnCodec
    if channels == 2 and value(cfg, "channels") != 1:
        reasons.append(f"EnCodec channels {value(cfg, 'channels')!r}: a stereo MusicGen codes "
                       "each channel with a mono EnCodec")
    if n_q is not None and rvq_n_q is not None and n_q > rvq_n_q:
        reasons.append(f"the LM uses {n_q} codebooks, the EnCodec has {rvq_n_q}")
    elif not reasons and n_q is not None and _bandwidth(cfg, n_q) is None:
        reasons.append(f"no target bandwidth gives {n_q} quantizers of {bins} entries on both "
                       "transformers 4.44 (10 bits per codebook) and 5.x (log2 of the size)")
    return reasons


def refusals(lm_cfg: DictConfig, compression_cfg: DictConfig) -> list[str]:
    """One line per reason the LM and its EnCodec cannot be written in transformers' format."""
    return _lm_refusals(lm_cfg) + _compression_refusals(compression_cfg, lm_cfg)


def encodec_refusals(compression_cfg: DictConfig) -> list[str]:
    """One line per reason an EnCodec alone (all its codebooks) cannot be written as
    transformers' ``EncodecModel``."""
    # the EnCodec's own codebooks stand for an LM's: every check of the pair applies
    bins = _int(compression_cfg, "rvq.bins")
    itself = OmegaConf.create({"transformer_lm": {"card": bins,
                                                  "n_q": _int(compression_cfg, "rvq.n_q")}})
    reasons = [] if _power_of_two(bins) else [
        f"rvq.bins {bins}: not a power of two (transformers' EnCodec refuses it)"]
    return reasons + _compression_refusals(compression_cfg, itself)


def _refuse(lm_cfg: DictConfig, compression_cfg: DictConfig) -> None:
    found = refusals(lm_cfg, compression_cfg)
    if found:
        raise ValueError("not representable in transformers' format: " + "; ".join(found))


# ---- configs ----

def _frame_rate(cfg: DictConfig) -> int:
    """transformers' frame rate: the sample rate over the hop, rounded up."""
    return math.ceil(_required(cfg, "sample_rate") / math.prod(value(cfg, "seanet.ratios")))


def _bandwidth(cfg: DictConfig, n_q: int) -> float | None:
    """A bandwidth (kbps) from which 4.44 and 5.x both derive ``n_q`` quantizers, mid-way in
    the range both accept so float rounding cannot tip it; None when the ranges do not meet."""
    bits = math.log2(_int(cfg, "rvq.bins") or 1)
    frame_rate = _frame_rate(cfg)
    low = n_q * max(bits, LEGACY_BITS_PER_CODEBOOK) * frame_rate
    high = (n_q + 1) * min(bits, LEGACY_BITS_PER_CODEBOOK) * frame_rate
    return (low + high) / 2 / 1000 if low < high else None


def encodec_config_kwargs(compression_cfg: DictConfig, n_q: int) -> dict[str, Any]:
    """``transformers.EncodecConfig`` arguments for the EnCodec, using its first ``n_q``
    codebooks (the LM's)."""
    cfg = compression_cfg
    return {
        "sampling_rate": _int(cfg, "sample_rate"), "audio_channels": _int(cfg, "channels"),
        "target_bandwidths": [_bandwidth(cfg, n_q)], "normalize": False,
        "chunk_length_s": None, "overlap": None,
        "hidden_size": _int(cfg, "seanet.dimension"), "num_filters": _int(cfg, "seanet.n_filters"),
        "num_residual_layers": _int(cfg, "seanet.n_residual_layers"),
        "upsampling_ratios": value(cfg, "seanet.ratios"), "norm_type": "weight_norm",
        "kernel_size": _int(cfg, "seanet.kernel_size"),
        "last_kernel_size": _int(cfg, "seanet.last_kernel_size"),
        "residual_kernel_size": _int(cfg, "seanet.residual_kernel_size"),
        "dilation_growth_rate": _int(cfg, "seanet.dilation_base"),
        "use_causal_conv": bool(value(cfg, "seanet.causal")),
        "pad_mode": value(cfg, "seanet.pad_mode"), "compress": _int(cfg, "seanet.compress"),
        "num_lstm_layers": _int(cfg, "seanet.lstm"),
        "trim_right_ratio": float(value(cfg, "seanet.decoder.trim_right_ratio") or 1.0),
        "codebook_size": _int(cfg, "rvq.bins"), "codebook_dim": _int(cfg, "seanet.dimension"),
        "use_conv_shortcut": not value(cfg, "seanet.true_skip"),
    }


def decoder_config_kwargs(lm_cfg: DictConfig, max_positions: int = 2048) -> dict[str, Any]:
    """``transformers.MusicgenDecoderConfig`` arguments for the LM. ``max_positions`` sizes the
    sinusoidal table (frames + n_q - 1 per generation; transformers 4.44 extends it)."""
    tf = "transformer_lm"
    dim, card = _required(lm_cfg, f"{tf}.dim"), _required(lm_cfg, f"{tf}.card")
    return {
        "vocab_size": card, "hidden_size": dim,
        "num_hidden_layers": _required(lm_cfg, f"{tf}.num_layers"),
        "num_attention_heads": _required(lm_cfg, f"{tf}.num_heads"),
        "ffn_dim": dim * _required(lm_cfg, f"{tf}.hidden_scale"),
        "num_codebooks": _int(lm_cfg, f"{tf}.n_q"), "audio_channels": audio_channels(lm_cfg),
        "max_position_embeddings": max_positions,
        "activation_function": ACTIVATIONS[value(lm_cfg, f"{tf}.activation")],
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0,
        "scale_embedding": False, "tie_word_embeddings": False,
        # audiocraft's special token (the pattern's padding and first input) is card, one past
        # the vocabulary: generation takes it from generation_config.json; in the decoder's
        # config transformers 5.x calls it outside the vocabulary on every load
        "pad_token_id": None, "bos_token_id": None,
    }


def melody_kwargs(lm_cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(MusicgenMelodyConfig's chroma arguments, MusicgenMelodyFeatureExtractor's
    arguments)`` of a MusicGen-melody, from its chroma conditioner and training segment."""
    melody = melody_attributes(lm_cfg)
    if melody is None:
        raise ValueError("not a MusicGen-melody: no chroma_stem and T5 conditioners")
    stem = f"conditioners.{melody[0]}.chroma_stem"
    n_chroma, n_fft = _required(lm_cfg, f"{stem}.n_chroma"), 2 ** _required(lm_cfg,
                                                                             f"{stem}.radix2_exp")
    sample_rate = _required(lm_cfg, "sample_rate")
    seconds = value(lm_cfg, "dataset.segment_duration")
    hop = n_fft // 4  # AudioCraft's ChromaExtractor: winhop = n_fft // 4
    # frames of one training segment's chroma (a centred STFT): what AudioCraft pads the
    # melody's chroma to (match_len_on_eval), transformers' chroma_length
    length = int(sample_rate * float(seconds)) // hop + 1
    return ({"num_chroma": n_chroma, "chroma_length": length},
            {"feature_size": n_chroma, "num_chroma": n_chroma, "sampling_rate": sample_rate,
             "n_fft": n_fft, "hop_length": hop, "chunk_length": math.ceil(float(seconds)),
             # demucs' stems vocals (3) and other (2), as AudioCraft's conditioner takes them
             "stem_indices": [3, 2]})


def generation_kwargs(lm_cfg: DictConfig) -> dict[str, Any]:
    """``GenerationConfig`` arguments matching audiocraft's defaults for this LM."""
    card = _int(lm_cfg, "transformer_lm.card")
    coef = value(lm_cfg, "classifier_free_guidance.inference_coef")
    return {"decoder_start_token_id": card, "pad_token_id": card, "bos_token_id": card,
            "do_sample": True, "top_k": 250,
            "guidance_scale": float(coef) if isinstance(coef, (int, float)) else None}


# ---- weights ----

LM_RULES = [  # audiocraft key pattern -> transformers MusicgenForCausalLM key
    (r"emb\.(\d+)\.weight", r"model.decoder.embed_tokens.\1.weight"),
    (r"linears\.(\d+)\.weight", r"lm_heads.\1.weight"),
    (r"out_norm\.(weight|bias)", r"model.decoder.layer_norm.\1"),
    (r"transformer\.layers\.(\d+)\.(?:self_attn\.)(?:mha\.)?out_proj\.weight",
     r"model.decoder.layers.\1.self_attn.out_proj.weight"),
    (r"transformer\.layers\.(\d+)\.(?:cross_attention\.)(?:mha\.)?out_proj\.weight",
     r"model.decoder.layers.\1.encoder_attn.out_proj.weight"),
    (r"transformer\.layers\.(\d+)\.linear1\.weight", r"model.decoder.layers.\1.fc1.weight"),
    (r"transformer\.layers\.(\d+)\.linear2\.weight", r"model.decoder.layers.\1.fc2.weight"),
    (r"transformer\.layers\.(\d+)\.norm1\.(weight|bias)",
     r"model.decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer\.layers\.(\d+)\.norm_cross\.(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"transformer\.layers\.(\d+)\.norm2\.(weight|bias)",
     r"model.decoder.layers.\1.final_layer_norm.\2"),
]
PACKED = re.compile(r"transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.(?:mha\.)?"
                     r"in_proj_weight")
PROJECTION_KEY = re.compile(r"condition_provider\.conditioners\.(\w+)\.output_proj\.(weight|bias)")
# the melody conditioner's STFT window: a buffer AudioCraft and transformers both compute
COMPUTED_LM_KEY = re.compile(r"condition_provider\.conditioners\.\w+\.chroma\.spec\.window")
TEXT_PROJECTION, MELODY_PROJECTION = "enc_to_dec_proj", "audio_enc_to_dec_proj"


State = Mapping[str, "torch.Tensor | LazyTensor"]


def _tensor(state: State, key: str) -> torch.Tensor:
    # lazily read states (lazy_tensors) load one tensor at a time; contiguous, owned copies
    # because safetensors refuses views and shared storage
    found = state[key]
    tensor = found if isinstance(found, torch.Tensor) else found.load()
    return tensor.detach().to(torch.float32).contiguous().clone()


def projection_modules(lm_cfg: DictConfig) -> dict[str, str]:
    """Conditioner attribute -> the transformers module holding its output projection."""
    melody = melody_attributes(lm_cfg)
    if melody is None:
        return {name: TEXT_PROJECTION for name in _conditioner_names(lm_cfg)}
    return {melody[0]: MELODY_PROJECTION, melody[1]: TEXT_PROJECTION}


def decoder_state(lm_state: State, projections: Mapping[str, str] | None = None,
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The LM state as ``(MusicgenForCausalLM state, projections' state)``, float32: each
    conditioner's output projection under its module of ``projections`` (attribute -> module,
    :func:`projection_modules`; default ``enc_to_dec_proj``). Raises ``ValueError`` on a key
    that has no place (nothing is dropped silently)."""
    decoder: dict[str, torch.Tensor] = {}
    projection: dict[str, torch.Tensor] = {}
    for key in lm_state:
        packed, proj = PACKED.fullmatch(key), PROJECTION_KEY.fullmatch(key)
        if COMPUTED_LM_KEY.fullmatch(key):
            continue  # a buffer both recompute (the chroma's STFT window)
        if packed:
            # audiocraft packs q, k, v into one [3 * dim, dim] matrix, in that order
            layer = f"model.decoder.layers.{packed.group(1)}." + (
                "self_attn" if packed.group(2) == "self_attn" else "encoder_attn")
            for name, part in zip("qkv", _tensor(lm_state, key).chunk(3, dim=0), strict=True):
                decoder[f"{layer}.{name}_proj.weight"] = part.contiguous().clone()
        elif proj:
            module = (projections or {}).get(proj.group(1), TEXT_PROJECTION)
            projection[f"{module}.{proj.group(2)}"] = _tensor(lm_state, key)
        else:
            decoder[renamed(key, LM_RULES)] = _tensor(lm_state, key)
    return decoder, projection


def renamed(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise ValueError(f"{key}: no place for it in transformers' format")


ENCODEC_RULES = [
    (r"(encoder|decoder)\.model\.(\d+)\.(?:conv\.conv|convtr\.convtr)\.(weight_g|weight_v|bias)",
     r"\1.layers.\2.conv.\3"),
    (r"(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(weight_g|weight_v|bias)",
     r"\1.layers.\2.block.\3.conv.\4"),
    (r"(encoder|decoder)\.model\.(\d+)\.shortcut\.conv\.conv\.(weight_g|weight_v|bias)",
     r"\1.layers.\2.shortcut.conv.\3"),
    (r"(encoder|decoder)\.model\.(\d+)\.lstm\.(\w+)", r"\1.layers.\2.lstm.\3"),
    (r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)",
     r"quantizer.layers.\1.codebook.\2"),
]
_QUANTIZER_LAYER = re.compile(r"quantizer\.vq\.layers\.(\d+)\.")


def encodec_state(compression_state: State, n_q: int) -> dict[str, torch.Tensor]:
    """The EnCodec state as transformers' ``EncodecModel`` state with the first ``n_q``
    codebooks; weight norm as ``weight_g``/``weight_v`` (4.44 reads them, 5.x renames them on
    load). Raises ``ValueError`` on a key that has no place."""
    mapped = {}
    for key in compression_state:
        layer = _QUANTIZER_LAYER.match(key)
        if layer and int(layer.group(1)) >= n_q:
            continue  # codebooks the LM never uses: transformers would not have the layer
        mapped[renamed(key, ENCODEC_RULES)] = _tensor(compression_state, key)
    return mapped


def checked_encodec(lm_cfg: DictConfig, compression_cfg: DictConfig,
                    compression_state: State) -> tuple[dict[str, Any],
                                                                    dict[str, torch.Tensor]]:
    """``(EncodecConfig kwargs, EncodecModel state)``, refusing what cannot be represented."""
    _refuse(lm_cfg, compression_cfg)
    n_q = codec_codebooks(lm_cfg)
    return encodec_config_kwargs(compression_cfg, n_q), encodec_state(compression_state, n_q)


def checked_decoder(lm_cfg: DictConfig, compression_cfg: DictConfig,
                    lm_state: State) -> tuple[dict[str, Any],
                                                          dict[str, torch.Tensor],
                                                          dict[str, torch.Tensor]]:
    """``(MusicgenDecoderConfig kwargs, decoder state, projections' state)``, refusing what
    cannot be represented."""
    _refuse(lm_cfg, compression_cfg)
    return (decoder_config_kwargs(lm_cfg),
            *decoder_state(lm_state, projection_modules(lm_cfg)))


def musicgen_state(decoder: Mapping[str, torch.Tensor], projection: Mapping[str, torch.Tensor],
                   encodec: Mapping[str, torch.Tensor],
                   text_encoder: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state of a ``MusicgenForConditionalGeneration`` (or ``MusicgenMelody...``) from its
    parts; ``projection`` holds the projections' full names (``enc_to_dec_proj.weight``...)."""
    return {**{f"text_encoder.{k}": v for k, v in text_encoder.items()},
            **{f"audio_encoder.{k}": v for k, v in encodec.items()},
            **{f"decoder.{k}": v for k, v in decoder.items()}, **projection}
