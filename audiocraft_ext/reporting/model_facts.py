"""What a release's model is, read from its ``xp.cfg``: family, size, audio format, conditioning.

Values are read raw (never resolved against this machine); one that is not a literal of the
expected type is recorded as unknown (None) rather than guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig, ListConfig, Node, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from ..errors import ExportError, first_line
from ..families import Family
from ..untrusted.xp_config import raw_value


@dataclass(frozen=True)
class ModelRecord:
    """The facts a model card states about the model."""

    family: str | None  # the solver: musicgen, audiogen, magnet, compression
    model_class: str | None  # what loads it: MusicGen, AudioGen, MAGNeT, CompressionModel
    is_lm: bool = True  # an LM, else an EnCodec (the family's verdict)
    sample_rate: int | None = None
    channels: int | None = None
    codebooks: int | None = None
    card: int | None = None  # codebook size
    frame_rate: float | None = None  # codebook frames per second
    codebooks_pattern: str | None = None
    dim: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    conditioners: dict[str, str] = field(default_factory=dict)  # attribute -> kind
    segment_duration: float | None = None  # seconds of audio per training example
    cfg_coef: float | None = None  # classifier-free guidance at inference
    # stereo as AudioCraft codes it (interleave_stereo_codebooks): the LM's codebooks alternate
    # between the left and right channels, each coded by the mono EnCodec
    interleaved_stereo: bool = False

    def with_frame_rate(self, frame_rate: float | None) -> ModelRecord:
        """This record with the frame rate filled in, when it was unknown."""
        if self.frame_rate is not None or frame_rate is None:
            return self
        return replace(self, frame_rate=frame_rate)


def _int(cfg: DictConfig, key: str) -> int | None:
    value = raw_value(cfg, key)
    return value if type(value) is int else None


def _number(cfg: DictConfig, key: str) -> float | None:
    value = raw_value(cfg, key)
    return float(value) if type(value) in (int, float) else None


def _str(cfg: DictConfig, key: str) -> str | None:
    value = raw_value(cfg, key)
    return value if isinstance(value, str) and "${" not in value else None


def encodec_frame_rate(cfg: DictConfig) -> float | None:
    """Frames per second of an EnCodec config: the sample rate over SEANet's total stride."""
    sample_rate, ratios = _int(cfg, "sample_rate"), raw_value(cfg, "seanet.ratios")
    if isinstance(ratios, ListConfig):
        ratios = OmegaConf.to_container(ratios, resolve=False)
    elif isinstance(ratios, list):  # raw_value gives a list's nodes
        ratios = [r._value() if isinstance(r, Node) else r for r in ratios]
    if sample_rate is None or not isinstance(ratios, list) \
            or not all(type(r) is int and r > 0 for r in ratios):
        return None
    return sample_rate / math.prod(ratios)


def model_facts(cfg: DictConfig, family: Family, compression_cfg: DictConfig | None = None,
                record: Callable[[str], str] = str) -> ModelRecord:
    """The model of ``family`` that ``cfg`` describes; an LM's frame rate comes from its
    compression model's config, when one is shipped. ``record`` records a name that may be
    a path (a T5 given as a local folder) as the release records paths."""
    return (lm_facts(cfg, family, compression_cfg, record) if family.is_lm
            else compression_facts(cfg))


def compression_facts(cfg: DictConfig) -> ModelRecord:
    """An EnCodec (compression solver) XP's model."""
    return ModelRecord(
        family=_str(cfg, "solver"), model_class="CompressionModel", is_lm=False,
        sample_rate=_int(cfg, "sample_rate"), channels=_int(cfg, "channels"),
        codebooks=_int(cfg, "rvq.n_q"), card=_int(cfg, "rvq.bins"),
        frame_rate=encodec_frame_rate(cfg), dim=_int(cfg, "seanet.dimension"),
        segment_duration=_number(cfg, "dataset.segment_duration"))


def lm_facts(cfg: DictConfig, family: Family, compression_cfg: DictConfig | None = None,
             record: Callable[[str], str] = str) -> ModelRecord:
    """An LM's model."""
    return ModelRecord(
        family=_str(cfg, "solver"), model_class=family.model_class,
        sample_rate=_int(cfg, "sample_rate"), channels=_int(cfg, "channels"),
        codebooks=_int(cfg, "transformer_lm.n_q"), card=_int(cfg, "transformer_lm.card"),
        frame_rate=encodec_frame_rate(compression_cfg) if compression_cfg is not None else None,
        codebooks_pattern=_str(cfg, "codebooks_pattern.modeling"),
        dim=_int(cfg, "transformer_lm.dim"), num_layers=_int(cfg, "transformer_lm.num_layers"),
        num_heads=_int(cfg, "transformer_lm.num_heads"),
        conditioners=_conditioners(cfg, record),
        segment_duration=_number(cfg, "dataset.segment_duration"),
        cfg_coef=_number(cfg, "classifier_free_guidance.inference_coef"),
        interleaved_stereo=_int(cfg, "channels") == 2
        and raw_value(cfg, "interleave_stereo_codebooks.use") is True)


def _conditioners(cfg: DictConfig, record: Callable[[str], str]) -> dict[str, str]:
    """``attribute -> kind`` of the conditioners, with the T5 model's name for T5."""
    node = raw_value(cfg, "conditioners")
    if not isinstance(node, DictConfig):
        return {}
    found = {}
    for attribute in map(str, node):
        kind = _str(cfg, f"conditioners.{attribute}.model")
        if kind is None:
            continue
        name = _str(cfg, f"conditioners.{attribute}.{kind}.name")
        found[attribute] = f"{kind} ({record(name)})" if name else kind
    return found


def cfg_of_yaml(text: Any, source: str = "a release file") -> DictConfig | None:
    """The config of a release package's ``xp.cfg`` YAML text, or None; ExportError when the
    text (from a user's file) is not YAML."""
    if not isinstance(text, str):
        return None
    try:
        cfg = OmegaConf.create(text)
    except (ValueError, YAMLError, OmegaConfBaseException, RecursionError) as exc:
        raise ExportError(f"{source}: its xp.cfg is not readable YAML ({first_line(exc)})"
                          ) from exc
    return cfg if isinstance(cfg, DictConfig) else None
