"""Does ``xp.cfg`` describe the state it comes with? Checked before any model is built.

Validation and transformers' proof build models from the config, not from the state: a config
that says ``transformer_lm.num_layers=100000`` over a 2-layer state makes audiocraft's builder
allocate 100,000 layers before the comparison with the state could notice. So the sizes a
config gives the builder are checked here against the tensors' names and shapes (read from
the lazy state: ``.shape`` reads no bytes) and refused in one line naming the mismatch.

What is checked is audiocraft's own layout (``LMModel``: ``emb.<k>``, ``linears.<k>``,
``transformer.layers.<i>``; EnCodec: SEANet and ``quantizer.vq.layers.<i>._codebook``). Counts
(layers, codebooks) must match exactly. A size (width, card, ...) is refused when no tensor of
the state agrees with it: a state damaged in one tensor is left to validation's comparison,
which names each wrong tensor, and a crafted state that agrees in one small tensor only is
caught by the bound on the parameters the config implies. Values that are absent or not
literals (interpolations, resolvers) are not checked here: validation reports them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from omegaconf import DictConfig

from ..errors import ExportError, shown
from ..families import COMPRESSION_SOLVER, FAMILIES, Family
from .lazy_tensors import TensorLike
from .training_history import as_float
from .xp_config import literal_value

LM_MODELS = ("transformer_lm", "transformer_lm_magnet")  # what audiocraft's builder makes
# A training segment longer than an hour is no training segment: MusicGen trains on 30 s,
# AudioGen on 10 s. transformers' format sizes its position table by the segment's frames.
MAX_SEGMENT_SECONDS = 3600
# MAGNeT's masks for a 30 s segment at 50 Hz with 32 heads: 0.9 GB; ten times that at most
MAX_MAGNET_MASK_BYTES = 8 << 30
_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")
_EMB = re.compile(r"^emb\.(\d+)\.weight$")
_LINEAR = re.compile(r"^linears\.(\d+)\.weight$")
_FFN = re.compile(r"^transformer\.layers\.\d+\.linear1\.weight$")
_CODEBOOK = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.embed$")
_CONVTR = re.compile(r"^decoder\.model\.(\d+)\.convtr\.convtr\.(?:weight_v|weight)$")
_LSTM = re.compile(r"^decoder\.model\.\d+\.lstm\.weight_ih_l(\d+)$")


def check_architecture(family: Family, cfg: DictConfig | None,
                       state: Mapping[str, TensorLike], source: str) -> None:
    """Raise ExportError (one line, prefixed by ``source``) when ``cfg`` describes a model
    other than ``state``'s: an LM of audiocraft's ``transformer_lm`` or an EnCodec."""
    if cfg is None:
        return
    problems = (lm_problems(cfg, state) if family.is_lm
                else encodec_problems(cfg, state) if family.solver == COMPRESSION_SOLVER
                else [])
    if problems:
        raise ExportError(f"{source}: " + "; ".join(problems))


def check_encodec_architecture(cfg: DictConfig | None, state: Mapping[str, TensorLike],
                               source: str) -> None:
    """:func:`check_architecture` for an EnCodec (the one shipped beside an LM)."""
    check_architecture(FAMILIES[COMPRESSION_SOLVER], cfg, state, source)


def _number(cfg: DictConfig, key: str) -> int | float | None:
    found = literal_value(cfg, key)
    return found if isinstance(found, (int, float)) and not isinstance(found, bool) else None


def _says(key: str, found: object) -> str:
    return f"xp.cfg says {key}={shown(found)}"


def _shape(state: Mapping[str, TensorLike], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _indices(state: Mapping[str, TensorLike], pattern: re.Pattern[str]) -> dict[int, str]:
    """index -> first key, for the keys ``pattern`` matches (its group 1 is the index)."""
    found: dict[int, str] = {}
    for key in state:
        match = pattern.match(key)
        if match:
            found.setdefault(int(match.group(1)), key)
    return dict(sorted(found.items()))


def _span(prefix: str, indices: Iterable[int]) -> str:
    """``transformer.layers.0-1`` for contiguous indices, else the first few (``prefix`` ends
    with the separator)."""
    found = sorted(indices)
    if not found:
        return "none"
    if found == list(range(found[0], found[-1] + 1)):
        return f"{prefix}{found[0]}" + (f"-{found[-1]}" if len(found) > 1 else "")
    return prefix + ", ".join(map(str, found[:4])) + (", ..." if len(found) > 4 else "")


def _count_problem(cfg: DictConfig, key: str, indices: Iterable[int], what: str,
                   prefix: str) -> str | None:
    """The state must hold exactly ``range(cfg[key])`` of these indexed modules."""
    wanted, found = _number(cfg, key), sorted(indices)
    if wanted is None or (wanted == len(found) and found == list(range(len(found)))):
        return None
    return (f"{_says(key, wanted)} but the state holds {len(found)} {what} "
            f"({_span(prefix, found)})")


def _size_problem(key: str, wanted: int | float | None, implied: Mapping[str, int],
                  what: str, compared: int | float | None = None) -> str | None:
    """``wanted`` (or what it gives, ``compared``) must be what at least one tensor implies
    (``implied``: "tensor [shape]" -> value; ``what`` says it, with ``{}`` for the value)."""
    compared = wanted if compared is None else compared
    if wanted is None or not implied or compared in implied.values():
        return None
    tensor, value = next(iter(implied.items()))
    return f"{_says(key, wanted)} but the state's {what.format(value)} ({tensor})"


def _shapes(state: Mapping[str, TensorLike], keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """"key [shape]" -> shape, for the 2-dimensional tensors of ``keys``."""
    shapes = {key: _shape(state, key) for key in keys}
    return {f"{key} {list(shape)}": shape for key, shape in shapes.items() if len(shape) == 2}


# ---- LMs (MusicGen, AudioGen, MAGNeT) ----

def lm_problems(cfg: DictConfig, state: Mapping[str, TensorLike]) -> list[str]:
    """One line per way ``cfg``'s ``transformer_lm`` differs from ``state`` (empty for an
    ``lm_model`` that audiocraft's builder does not make: its layout is unknown)."""
    if literal_value(cfg, "lm_model") not in LM_MODELS:
        return []
    tf = "transformer_lm"
    layers, embs, linears = (_indices(state, p) for p in (_LAYER, _EMB, _LINEAR))
    problems = [_count_problem(cfg, f"{tf}.num_layers", layers, "layers", "transformer.layers."),
                _count_problem(cfg, f"{tf}.n_q", embs, "codebook embeddings", "emb.")
                or _count_problem(cfg, f"{tf}.n_q", linears, "output heads", "linears."),
                *_lm_size_problems(cfg, state, embs.values(), linears.values())]
    found = [p for p in problems if p]
    if not found:  # every size agreed with some tensor: the total must agree too
        found += _parameter_problem(cfg, state)
    return found + [p for p in (*_generation_problems(cfg), _magnet_problem(cfg)) if p]


def _lm_size_problems(cfg: DictConfig, state: Mapping[str, TensorLike], embs: Iterable[str],
                      linears: Iterable[str]) -> list[str | None]:
    tf = "transformer_lm"
    dim, card = _number(cfg, f"{tf}.dim"), _number(cfg, f"{tf}.card")
    emb_shapes, head_shapes = _shapes(state, embs), _shapes(state, linears)
    widths = {name: shape[1] for name, shape in {**emb_shapes, **head_shapes}.items()}
    norm = tuple(state["out_norm.weight"].shape) if "out_norm.weight" in state else ()
    if len(norm) == 1:
        widths[f"out_norm.weight {list(norm)}"] = norm[0]
    width = _size_problem(f"{tf}.dim", dim, widths, "tensors are {} wide")
    # audiocraft's embeddings have card + 1 rows (the special token), its heads card
    cards = {**{name: shape[0] - 1 for name, shape in emb_shapes.items()},
             **{name: shape[0] for name, shape in head_shapes.items()}}
    problems = [width, _size_problem(f"{tf}.card", card, cards,
                                     "embeddings (card + 1 rows) and heads are for a card of {}"),
                _heads_problem(cfg, dim)]
    scale = _number(cfg, f"{tf}.hidden_scale")
    if scale is not None and not math.isfinite(as_float(scale)):
        problems.append(f"{_says(f'{tf}.hidden_scale', scale)}, which is not a finite number")
    elif scale is not None and dim is not None and width is None \
            and math.isfinite(as_float(scale) * as_float(dim)):
        # audiocraft's feed-forward layers are int(hidden_scale * dim) wide
        ffn = _shapes(state, (key for key in state if _FFN.match(key)))
        problems.append(_size_problem(
            f"{tf}.hidden_scale", scale, {name: shape[0] for name, shape in ffn.items()},
            f"feed-forward layers are {{}} wide, not {shown(scale)} x dim {dim}",
            compared=int(scale * dim)))
    return problems


def _heads_problem(cfg: DictConfig, dim: int | float | None) -> str | None:
    heads = _number(cfg, "transformer_lm.num_heads")
    if heads is None or not isinstance(dim, int):
        return None
    if not (isinstance(heads, int) and 1 <= heads <= dim and dim % heads == 0):
        return (f"{_says('transformer_lm.num_heads', heads)}, which does not divide "
                f"transformer_lm.dim={shown(dim)} into heads")
    return None


def _parameter_problem(cfg: DictConfig, state: Mapping[str, TensorLike]) -> list[str]:
    """The parameters the config implies at least (each layer's self-attention holds at least
    2 dim^2, embeddings and heads n_q (2 card + 1) dim) against those the state holds: every
    size above agreed with some tensor, which one small crafted tensor can do."""
    tf = "transformer_lm"
    sizes = [_number(cfg, f"{tf}.{k}") for k in ("num_layers", "dim", "n_q", "card")]
    if any(not isinstance(s, int) for s in sizes):
        return []
    layers, dim, n_q, card = (int(s) for s in sizes)  # type: ignore[arg-type]
    implied = layers * 2 * dim * dim + n_q * (2 * card + 1) * dim
    held = sum(math.prod(v.shape) for v in state.values())
    if implied <= held:
        return []
    return [f"xp.cfg describes an LM of at least {implied:,} parameters ({tf}.num_layers="
            f"{layers}, dim={dim}, n_q={n_q}, card={card}) but the state holds {held:,}"]


def _generation_problems(cfg: DictConfig) -> list[str]:
    """Values generation and transformers' proof compute with: finite numbers, sane sizes."""
    problems = []
    coef = literal_value(cfg, "classifier_free_guidance.inference_coef")
    if coef is not None and not (isinstance(coef, (int, float)) and not isinstance(coef, bool)
                                 and math.isfinite(as_float(coef))):
        problems.append(f"{_says('classifier_free_guidance.inference_coef', coef)}, "
                        "which is not a finite number")
    seconds = _number(cfg, "dataset.segment_duration")
    if seconds is not None and not (math.isfinite(as_float(seconds))
                                    and seconds <= MAX_SEGMENT_SECONDS):
        problems.append(f"{_says('dataset.segment_duration', seconds)} (seconds), longer than "
                        f"any training segment ({MAX_SEGMENT_SECONDS} s at most)")
    return problems


def _magnet_problem(cfg: DictConfig) -> str | None:
    """MAGNeT's LM builds, with the model, (n_q - 1) x num_heads attention masks of (frames of
    a segment)^2 floats: bounded here by the frame rate its config was trained with."""
    tf = "transformer_lm"
    sizes = [_number(cfg, k) for k in (f"{tf}.compression_model_framerate",
                                       "dataset.segment_duration", f"{tf}.n_q",
                                       f"{tf}.num_heads", f"{tf}.subcodes_context")]
    if literal_value(cfg, "lm_model") != "transformer_lm_magnet" \
            or any(s is None for s in sizes[:4]):
        return None
    rate, seconds, n_q, heads, context = (as_float(s) if s is not None else None for s in sizes)
    if context is not None and context < 0:  # no restricted context: no masks
        return None
    frames = rate * seconds  # type: ignore[operator]
    side = frames + 8  # audiocraft aligns each side to 8; float32 on the CPU
    needed = max(n_q - 1, 0) * heads * side * side * 4  # type: ignore[operator]
    if needed <= MAX_MAGNET_MASK_BYTES:
        return None
    return (f"{_says('dataset.segment_duration', sizes[1])} (seconds), {frames:g} frames at "
            f"{tf}.compression_model_framerate={shown(sizes[0])}: MAGNeT's attention masks would "
            f"take {needed / 2**30:,.0f} GiB (at most {MAX_MAGNET_MASK_BYTES >> 30} GiB)")


# ---- EnCodec ----

def encodec_problems(cfg: DictConfig, state: Mapping[str, TensorLike]) -> list[str]:
    """One line per way an EnCodec XP's config differs from its state (SEANet and residual
    vector quantizer, as audiocraft's builder makes them)."""
    if literal_value(cfg, "compression_model") != "encodec":
        return []
    codebooks = _indices(state, _CODEBOOK)
    problems = []
    if codebooks:
        problems.append(_count_problem(cfg, "rvq.n_q", codebooks, "codebooks",
                                       "quantizer.vq.layers."))
        shapes = {f"{key} {list(_shape(state, key))}": _shape(state, key)
                  for key in codebooks.values() if len(_shape(state, key)) == 2}
        problems.append(_size_problem("rvq.bins", _number(cfg, "rvq.bins"),
                                      {t: s[0] for t, s in shapes.items()},
                                      "codebooks have {} entries"))
        problems.append(_size_problem("seanet.dimension", _number(cfg, "seanet.dimension"),
                                      {t: s[1] for t, s in shapes.items()},
                                      "codebooks hold vectors of {}"))
    problems += _seanet_problems(cfg, state)
    return [p for p in problems if p]


def _seanet_problems(cfg: DictConfig, state: Mapping[str, TensorLike]) -> list[str | None]:
    if literal_value(cfg, "encodec.autoencoder") not in (None, "seanet"):
        return []
    problems: list[str | None] = []
    first = next((k for k in ("encoder.model.0.conv.conv.weight_v",
                              "encoder.model.0.conv.conv.weight") if k in state), None)
    if first is not None and len(_shape(state, first)) == 3:
        filters = {f"{first} {list(_shape(state, first))}": _shape(state, first)[0]}
        problems.append(_size_problem("seanet.n_filters", _number(cfg, "seanet.n_filters"),
                                      filters, "first convolution has {} filters"))
    upsampling = _indices(state, _CONVTR)
    ratios = literal_value(cfg, "seanet.ratios")
    if upsampling and isinstance(ratios, list):
        kernels = [(_shape(state, key) or (0,))[-1] for key in upsampling.values()]
        numbers = all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios)
        if not numbers or [2 * r for r in ratios] != kernels:
            tensors = _span("decoder.model.", upsampling)
            problems.append(f"{_says('seanet.ratios', ratios)} but the state's decoder "
                            f"upsamples {len(kernels)} times, with kernels {kernels} of 2 x "
                            f"ratio ({tensors})")
    lstm = _indices(state, _LSTM)
    if lstm:
        problems.append(_count_problem(cfg, "seanet.lstm", lstm, "decoder LSTM layers",
                                       f"{lstm[min(lstm)].rsplit('.', 1)[0]}.weight_ih_l"))
    return problems
