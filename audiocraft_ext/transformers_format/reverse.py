"""transformers' MusicGen weights back in AudioCraft's names: the inverse of :mod:`.mapping`.

The inverse is built from the base's own keys (``mapping`` renames each of them forward), so a
weight lands under exactly the name the base's LM or EnCodec uses, and a transformers key with
no AudioCraft counterpart, or an AudioCraft key with no transformers weight, is named rather
than guessed. No transformers import: this is renaming and joining tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..untrusted.lazy_tensors import ConcatTensor, TensorLike
from .mapping import (
    COMPUTED_LM_KEY,
    ENCODEC_RULES,
    LM_RULES,
    PACKED,
    PROJECTION_KEY,
    TEXT_PROJECTION,
    renamed,
)

DECODER, ENCODEC, TEXT_ENCODER = "decoder.", "audio_encoder.", "text_encoder."
# computed by transformers (sinusoids), never an AudioCraft weight
COMPUTED = re.compile(r"decoder\.model\.decoder\.embed_positions\.weights?")
# transformers 5.x (and torch's parametrized weight norm) name EnCodec's weight norm so
WEIGHT_NORM_ALIASES = {".weight_g": ".parametrizations.weight.original0",
                       ".weight_v": ".parametrizations.weight.original1"}
TRANSFORMERS_NAMES = re.compile(r"(^|\.)(model\.decoder\.layers\.\d+\.|lm_heads\.\d+\.weight$)")


@dataclass
class Unmapped:
    """What a transformers state gives back in AudioCraft's names."""

    lm: dict[str, TensorLike] = field(default_factory=dict)
    encodec: dict[str, TensorLike] = field(default_factory=dict)
    text_encoder: dict[str, TensorLike] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # transformers keys with no place
    mismatched: list[str] = field(default_factory=list)  # q, k, v that do not stack


def has_transformers_names(keys: Iterable[str]) -> bool:
    """Whether a state's keys are transformers' MusicGen names (not AudioCraft's)."""
    return any(TRANSFORMERS_NAMES.search(key) for key in keys)


def _lm_targets(lm_keys: Iterable[str], projections: Mapping[str, str],
                ) -> dict[str, tuple[str, int | None]]:
    """transformers key -> (AudioCraft LM key, part of the packed q/k/v matrix or None)."""
    targets: dict[str, tuple[str, int | None]] = {}
    for key in lm_keys:
        packed, projection = PACKED.fullmatch(key), PROJECTION_KEY.fullmatch(key)
        if COMPUTED_LM_KEY.fullmatch(key):
            continue  # a buffer transformers recomputes: the base's stays
        if packed:
            layer = f"{DECODER}model.decoder.layers.{packed.group(1)}." + (
                "self_attn" if packed.group(2) == "self_attn" else "encoder_attn")
            for part, name in enumerate("qkv"):
                targets[f"{layer}.{name}_proj.weight"] = (key, part)
        elif projection:
            module = projections.get(projection.group(1), TEXT_PROJECTION)
            targets[f"{module}.{projection.group(2)}"] = (key, None)
        else:
            targets[DECODER + renamed(key, LM_RULES)] = (key, None)
    return targets


def _encodec_targets(encodec_keys: Iterable[str]) -> dict[str, str]:
    """transformers key (either weight-norm naming) -> AudioCraft EnCodec key."""
    targets = {}
    for key in encodec_keys:
        name = ENCODEC + renamed(key, ENCODEC_RULES)
        targets[name] = key
        for old, new in WEIGHT_NORM_ALIASES.items():
            if name.endswith(old):
                targets[name[:-len(old)] + new] = key
    return targets


def audiocraft_states(state: Mapping[str, TensorLike], base_lm: Mapping[str, TensorLike],
                      encodec_keys: Iterable[str],
                      projections: Mapping[str, str] | None = None) -> Unmapped:
    """``state`` (a ``MusicgenForConditionalGeneration`` or ``MusicgenMelody...`` state) in the
    names of the base's LM (``base_lm``) and EnCodec (``encodec_keys``); ``projections`` says
    which transformers module holds each conditioner's projection (mapping's
    ``projection_modules``). EnCodec codebooks transformers does not hold (beyond the LM's)
    are left out of ``encodec``: the base's stay; so do the buffers transformers recomputes."""
    lm_targets = _lm_targets(base_lm, projections or {})
    encodec_targets = _encodec_targets(encodec_keys)
    out = Unmapped()
    parts: dict[str, dict[int, TensorLike]] = {}
    for name, tensor in state.items():
        if name in lm_targets:
            key, part = lm_targets[name]
            if part is None:
                out.lm[key] = tensor
            else:
                parts.setdefault(key, {})[part] = tensor
        elif name in encodec_targets:
            out.encodec[encodec_targets[name]] = tensor
        elif name.startswith(TEXT_ENCODER):
            out.text_encoder[name[len(TEXT_ENCODER):]] = tensor
        elif not COMPUTED.fullmatch(name):
            out.unexpected.append(name)
    for key, found in parts.items():
        if len(found) == 3:
            sources = [found[i] for i in range(3)]
            if len({(s.shape[1:], s.dtype) for s in sources}) > 1:
                out.mismatched.append(f"{key} (its q, k, v projections differ in width or "
                                      "dtype)")
                continue
            out.lm[key] = ConcatTensor(sources, sources[0].dtype)
    out.lm.update({key: base_lm[key] for key in base_lm if COMPUTED_LM_KEY.fullmatch(key)})
    return out


def with_decoder_prefix(state: Mapping[str, TensorLike]) -> dict[str, TensorLike]:
    """A ``MusicgenForCausalLM`` state (the decoder alone) in the full model's names."""
    if any(key.startswith(DECODER) for key in state):
        return dict(state)
    return {DECODER + key: tensor for key, tensor in state.items()}
