"""The release manifest (``export.json``): typed records, built once by the exporter."""

from __future__ import annotations

import dataclasses
import platform
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from ..untrusted.lazy_tensors import TensorLike
from ..untrusted.training_history import TrainingSummary
from ..writing.release_format import COMPRESSION_FILE, LM_FILE, audiocraft_version
from .model_facts import ModelRecord


@dataclass(frozen=True)
class FileFacts:
    """Size and modification time of a source file (or folder of weights)."""

    path: str
    bytes: int
    mtime: str

    @classmethod
    def of(cls, path: Path) -> FileFacts:
        """A file's facts; a folder's (weights in a folder) bytes are its files'."""
        stat = path.stat()
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) \
            if path.is_dir() else stat.st_size
        return cls(str(path), size,
                   datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat())


@dataclass(frozen=True)
class StateFacts:
    """Tensor count, parameter count, dtypes and bytes of a flat state dict."""

    tensors: int
    parameters: int
    dtypes: dict[str, int]
    bytes: int

    @classmethod
    def of(cls, state: Mapping[str, TensorLike]) -> StateFacts:
        dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state.values())
        return cls(tensors=len(state), parameters=sum(t.numel() for t in state.values()),
                   dtypes=dict(sorted(dtypes.items())),
                   bytes=sum(t.numel() * t.element_size() for t in state.values()))


@dataclass(frozen=True)
class WeightsRecord:
    """Where weights trained outside AudioCraft's solvers came from (``input=weights``)."""

    kind: str  # "state dict", "transformers" or "peft adapter"
    wrapper: str | None  # the key of the one-level wrapper that held the state
    prefix: str | None  # stripped from the names (module., lm., model.lm. ...)
    base: str  # input.base: what gave xp.cfg and the compression model
    base_kind: str  # "release folder", "training checkpoint" or "Hugging Face cache"
    tensors: int  # tensors read from the weights
    encodec: str  # "the base's" or "from the weights"
    text_encoder: str | None = None  # how a transformers folder's T5 compared with the base's
    adapter: dict[str, Any] | None = None  # a merged PEFT adapter: type, rank, alpha, targets


@dataclass(frozen=True)
class SourceRecord(FileFacts):
    """The training checkpoint exported."""

    name: str  # the release folder's default name
    solver: str | None
    xp_sig: str | None
    # the XP's Dora overrides (.argv.json) and the solver config among them (musicgen/debug):
    # the model card's fine-tuning recipe builds the same model with them
    argv: list[str] | None = None
    solver_config: str | None = None
    weights: WeightsRecord | None = None  # input=weights: what was read and over which base


@dataclass(frozen=True)
class StateRecord(StateFacts):
    """The released weights: what was asked for and what it resolved to."""

    selected: str  # the state choice (auto, best, ...)
    key: str  # the checkpoint key exported, or "average"
    dtype: str  # output.dtype
    members: list[dict[str, Any]] | None = None  # state=average: the files averaged


@dataclass(frozen=True)
class CompressionRecord:
    """The compression model shipped beside an LM."""

    reference: str  # //pretrained/NAME, //sig/SIG or a path
    pretrained: str | None
    source: FileFacts | None  # the file read, if any
    key: str | None  # the checkpoint key exported, for a training checkpoint
    state: StateFacts | None


@dataclass(frozen=True)
class ReleaseFile:
    bytes: int
    sha256: str


@dataclass
class Check:
    """One check of a release, as ``export.json`` records it (unset facts are left out)."""

    check: str
    ok: bool = False
    error: str | None = None
    model_class: str | None = None  # the class whose get_pretrained ran
    proves: list[str] | None = None  # the loaders a get_pretrained check ran on the way
    sample_rate: int | None = None
    frame_rate: float | None = None  # codebook frames per second of the compression model
    duration: float | None = None  # seconds generated
    shapes: dict[str, list[int]] | None = None  # generate: each clip's shape
    codes: list[int] | None = None  # encode_decode: the codes' shape
    decoded: list[int] | None = None  # encode_decode: the decoded audio's shape
    compare_seconds: float | None = None  # the part of `seconds` spent comparing tensors
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class ValidationReport:
    """What validation proved: one entry per check run, and what was skipped and why."""

    level: str
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # a local compression model validated in place of a //pretrained/ one
    # (validate.compression_model)
    compression_stand_in: str | None = None

    @property
    def passed(self) -> str:
        """``<level>: ok`` once at least one check ran (all pass, or validation raises)."""
        return f"{self.level}: ok" if self.checks else self.level

    @property
    def frame_rate(self) -> float | None:
        """The frame rate a loaded compression model reported, if any check loaded one."""
        return next((c.frame_rate for c in self.checks if c.frame_rate is not None), None)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "checks": [c.to_json() for c in self.checks],
                "skipped": self.skipped, "compression_stand_in": self.compression_stand_in}


@dataclass(frozen=True)
class Manifest:
    """Everything ``export.json`` records about a release."""

    release: str
    source: SourceRecord
    state: StateRecord
    compression: CompressionRecord | None
    repairs: list[str]
    files: dict[str, ReleaseFile]
    versions: dict[str, str]
    config: dict[str, Any] | None
    validation: ValidationReport | None = None
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: ModelRecord | None = None
    training: TrainingSummary | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # samples/ clips kept
    curves: str | None = None  # the training curves picture, when drawn
    license: str | None = None
    record_paths: str = "relative"  # output.record_paths
    paths_recorded: list[str] = field(default_factory=list)  # xp.cfg keys made relative
    # output.transformers: the model class, its text encoder, files and the equivalence proof
    transformers: dict[str, Any] | None = None

    def main_file(self) -> tuple[str, ReleaseFile]:
        """The LM file, or for an EnCodec-only release its compression model file."""
        name = LM_FILE if LM_FILE in self.files else COMPRESSION_FILE
        return name, self.files[name]

    def to_json(self) -> dict[str, Any]:
        """The export.json layout: the compression model's state facts beside its other facts,
        ``members`` only for an average."""
        data = dataclasses.asdict(self)
        if self.validation is not None:
            data["validation"] = self.validation.to_json()
        if data["state"]["members"] is None:
            del data["state"]["members"]
        if data["compression"] is not None:
            data["compression"].update(data["compression"].pop("state") or {})
        return data


def versions() -> dict[str, str]:
    import omegaconf

    import audiocraft_ext

    return {"audiocraft_ext": audiocraft_ext.__version__, "audiocraft": audiocraft_version(),
            "torch": torch.__version__, "omegaconf": omegaconf.__version__,
            "hydra": version("hydra-core"), "python": platform.python_version()}
