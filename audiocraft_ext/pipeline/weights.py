"""``input=weights``: weights trained outside AudioCraft's solvers, released over a base.

The base (an AudioCraft release folder, a training checkpoint or XP folder, or a Hub name in
the Hugging Face cache) gives ``xp.cfg`` and the compression model; the weights give the LM
(and, from a transformers folder, possibly a fine-tuned EnCodec). Every tensor is matched to
the base's by name and shape before anything is written, and the result is a
:class:`~audiocraft_ext.pipeline.plan.Selection` like a checkpoint's: the rest of the export
(plan, write, validate, describe) does not know where the weights came from.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..config import (
    AutoCompression,
    CheckpointCompression,
    ExportConfig,
    StateChoice,
    StateConfig,
)
from ..errors import ExportError, one_line, setting, shown
from ..families import family_of
from ..reporting.manifest import WeightsRecord
from ..reporting.model_facts import cfg_of_yaml
from ..untrusted.lazy_tensors import CastTensor, TensorLike, as_tensor
from ..untrusted.sources import CheckpointSource, WeightsSource, resolve_checkpoint
from ..untrusted.states import StateDict, checked_state, load_solver_checkpoint
from ..untrusted.weights_files import MUSICGEN_TYPES, WeightsFile, read_weights
from ..untrusted.xp_config import raw_value
from ..writing.compression import CompressionRelease, resolve_compression
from ..writing.release_format import COMPRESSION_FILE, LM_FILE, release_package
from ..writing.repairs import loadable_config
from .plan import Selection, select, transformers_refusal

logger = logging.getLogger(__name__)

HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
SHOWN_KEYS = 2  # keys named per kind of mismatch in a message
MAX_NAME = 120  # characters of a wrapper key or prefix recorded
_QUANTIZER_LAYER = re.compile(r"quantizer\.vq\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Base:
    """What gives the weights their architecture and compression model."""

    given: str  # input.base as the user gave it
    kind: str  # "release folder", "training checkpoint" or "Hugging Face cache"
    path: Path
    source: CheckpointSource  # where compression references resolve from
    cfg: DictConfig  # the LM's xp.cfg
    state: StateDict  # the base LM's weights: names and shapes the weights must match
    compression: CompressionRelease | None  # the base's compression model, when it has one
    xp_sig: str | None = None

    @property
    def transformers_folder(self) -> Path | None:
        """The base's transformers files (a release made with output.transformers=true, or
        a Hub snapshot), when it has them."""
        folder = self.path if self.path.is_dir() else None
        if folder is not None and (folder / "config.json").is_file() \
                and (folder / "model.safetensors").is_file():
            return folder
        return None


def resolve_base(given: str | None, trust: bool) -> Base:
    """The base ``input.base`` names; a one-line error when it gives no LM."""
    if not given:
        raise ExportError(f"no base given for the weights: set {setting('input.base', '...')}, "
                          "an AudioCraft release folder, a training checkpoint or XP folder, or "
                          "a Hub name in the Hugging Face cache: it gives xp.cfg and the "
                          "compression model")
    path = Path(given).expanduser()
    if not path.exists() and HUB_NAME.fullmatch(given):
        base = _release_base(given, _cached_snapshot(given), "Hugging Face cache", trust)
    elif path.is_file() and path.name == LM_FILE or (path / LM_FILE).is_file():
        folder = path.parent if path.is_file() else path
        base = _release_base(given, folder.resolve(), "release folder", trust)
    else:
        source = resolve_checkpoint(path)
        picked = select(source, StateConfig(select=StateChoice.auto), trust)
        base = Base(given, "training checkpoint", source.path, source, picked.cfg,
                    picked.state, None, picked.xp_sig)
    solver = raw_value(base.cfg, "solver")
    if not family_of(solver).is_lm:
        raise ExportError(f"{setting('input.base', given)} is a {shown(solver)} model, not "
                          "an LM: input=weights releases MusicGen, AudioGen and MAGNeT weights")
    return base


def _cached_snapshot(name: str) -> Path:
    """The Hugging Face cache's snapshot of the Hub repository ``name``; nothing downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ExportError(f"{setting('input.base', name)} is no local folder and not in the "
                          "Hugging Face cache (HF_HOME) as a Hub name: nothing is downloaded; "
                          f"fetch it first (huggingface-cli download {name}) or give a local "
                          "release folder") from exc


def _release_base(given: str, folder: Path, kind: str, trust: bool) -> Base:
    """A release folder's LM (state_dict.bin) and compression model, read as data."""
    lm_file = folder / LM_FILE
    if not lm_file.is_file():
        raise ExportError(f"{setting('input.base', given)}: {folder} has no {LM_FILE}")
    pkg = load_solver_checkpoint(lm_file, trust=trust)
    cfg = cfg_of_yaml(pkg.get("xp.cfg"), str(lm_file)) if pkg.get("exported") is True \
        else None
    state = pkg.get("best_state")
    if cfg is None or not isinstance(state, dict):
        raise ExportError(f"{lm_file} is not a release file (best_state, xp.cfg as YAML "
                          "text, exported)")
    source = CheckpointSource(lm_file, folder.name, None)
    compression = None
    if (folder / COMPRESSION_FILE).is_file():
        compression = resolve_compression(
            CheckpointCompression(path=str(folder / COMPRESSION_FILE)), cfg, source, trust)
    return Base(given, kind, folder, source, cfg,
                checked_state(dict(state), "best_state", str(lm_file)), compression)


def select_weights(source: WeightsSource, spec: ExportConfig) -> Selection:
    """Read ``source``'s weights, match them to the base's, and select them for release."""
    if spec.state.select is not StateChoice.auto:
        raise ExportError(f"{setting('state', spec.state.select.value)} picks a state of a "
                          "training checkpoint; input=weights releases the weights as given")
    trust = spec.input.trust
    base = resolve_base(source.base, trust)
    weights = read_weights(source.path, trust)
    logger.info("reading %s: %s, over the base %s (%s)", source.path, weights.described,
                base.given, base.kind)
    # the compression model shipped: the base's, or the one chosen (resolved as for the base)
    compression = (base.compression or _base_compression(base, trust)) \
        if isinstance(spec.compression, AutoCompression) \
        else resolve_compression(spec.compression, loadable_config(base.cfg)[0], base.source,
                                 trust)
    base_encodec = compression.state if compression and compression.state else {}
    if _transformers_named(weights):
        problem = transformers_refusal(family_of(raw_value(base.cfg, "solver")),
                                       loadable_config(base.cfg)[0],
                                       compression.package if compression else None)
        if problem:
            raise ExportError(f"{source.path} holds transformers' weights, which map only onto "
                              "a base transformers' Musicgen represents; the base "
                              f"{base.given} is not one: {problem}")
    with _transformers_base(base, weights, compression, spec) as base_folder:
        fitted = fit(weights, base, base_encodec, base_folder)
    if fitted.encodec:
        compression = _with_encodec(compression, fitted.encodec, source.path)
    record = WeightsRecord(  # the wrapper key and the prefix come from the file: bounded
        kind=weights.kind, wrapper=one_line(weights.wrapper, MAX_NAME) if weights.wrapper
        else None, prefix=one_line(fitted.prefix, MAX_NAME) if fitted.prefix else None,
        base=base.given, base_kind=base.kind, tensors=len(weights.state),
        encodec="from the weights" if fitted.encodec else "the base's",
        text_encoder=fitted.text_encoder, adapter=fitted.adapter)
    return Selection(base.cfg, weights.wrapper or weights.kind.replace(" ", "_"),
                     fitted.lm, base.xp_sig, None, weights=record, compression=compression)


def _transformers_named(weights: WeightsFile) -> bool:
    """Whether the weights are in transformers' names (a folder, an adapter, a state dict)."""
    from ..transformers_format.reverse import has_transformers_names

    return weights.kind in ("transformers", "peft adapter") \
        or has_transformers_names(weights.state)


def _base_compression(base: Base, trust: bool) -> CompressionRelease | None:
    """The compression model the base's xp.cfg names (a training checkpoint base)."""
    return resolve_compression(AutoCompression(), loadable_config(base.cfg)[0], base.source,
                               trust)


@contextmanager
def _transformers_base(base: Base, weights: WeightsFile,
                       compression: CompressionRelease | None,
                       spec: ExportConfig) -> Iterator[Path | None]:
    """The base as a transformers folder, for merging an adapter into (written to a temporary
    folder from the base's weights when the base has none); None for other weights."""
    if weights.kind != "peft adapter" or base.transformers_folder is not None:
        yield base.transformers_folder
        return
    from ..transformers_format.files import write_musicgen_files

    compression_cfg = cfg_of_yaml(compression.package.get("xp.cfg")) if compression else None
    if compression is None or compression.state is None or compression_cfg is None:
        raise ExportError(f"merging the adapter {weights.path} needs the base's transformers "
                          "model, and the base's compression model is not a file it holds")
    lm_cfg = loadable_config(base.cfg)[0]
    with tempfile.TemporaryDirectory(prefix="audiocraft-ext-base-") as folder:
        logger.info("writing the base in transformers' format to merge the adapter into")
        write_musicgen_files(Path(folder), lm_cfg, base.state, compression_cfg,
                             compression.state, spec.output.text_encoder)
        yield Path(folder)


@dataclass
class Fitted:
    """The weights in the base's names, checked against its shapes."""

    lm: StateDict
    encodec: StateDict  # an EnCodec the weights carry that differs from the base's, or {}
    prefix: str | None = None  # stripped from AudioCraft names
    text_encoder: str | None = None  # how the T5 of transformers weights compared
    adapter: dict | None = None  # what was merged (a PEFT adapter)


def fit(weights: WeightsFile, base: Base, base_encodec: StateDict,
        base_folder: Path | None) -> Fitted:
    """Map ``weights`` onto the base's names and check every tensor; ExportError naming the
    first missing, unexpected and mis-shaped keys when they do not fit."""
    if weights.kind == "peft adapter":
        return _fit_adapter(weights, base, base_encodec, base_folder)
    if weights.kind == "transformers":
        _refuse_other_layout(weights, base)
    if _transformers_named(weights):
        return _fit_transformers(weights.state, weights.path, base, base_encodec, base_folder)
    return _fit_audiocraft(weights, base, base_encodec)


def _fit_adapter(weights: WeightsFile, base: Base, base_encodec: StateDict,
                 base_folder: Path | None) -> Fitted:
    from ..transformers_format.lora import adapter_facts, merged_state
    from ..transformers_format.mapping import melody_attributes

    assert base_folder is not None  # _transformers_base made one
    melody = melody_attributes(loadable_config(base.cfg)[0]) is not None
    merged = merged_state(weights.path, base_folder, MUSICGEN_TYPES[
        "musicgen_melody" if melody else "musicgen"])
    fitted = _fit_transformers(merged, weights.path, base, base_encodec, base_folder)
    if _all_equal(fitted.lm, base.state):
        raise ExportError(f"the adapter {weights.path} changes no weight of the base's LM: its "
                          "target modules are not this model's, or its weights are zero")
    # merged in float32 by transformers: the release keeps the base's dtypes (output.dtype
    # casts further)
    fitted.lm = {key: tensor if tensor.dtype == base.state[key].dtype
                 else CastTensor([tensor], base.state[key].dtype)
                 for key, tensor in fitted.lm.items()}
    fitted.adapter = adapter_facts(weights.config or {})
    return fitted


def _refuse_other_layout(weights: WeightsFile, base: Base) -> None:
    """A transformers folder whose config says another layout than the base's (melody or
    not, mono or stereo), which equal tensor shapes would not reveal."""
    config = weights.config or {}
    decoder = config["decoder"] if isinstance(config.get("decoder"), dict) else {}
    from ..transformers_format.mapping import audio_channels, melody_attributes

    cfg = loadable_config(base.cfg)[0]
    wanted = {"model_type": "musicgen_melody" if melody_attributes(cfg) else "musicgen",
              "audio_channels": audio_channels(cfg)}
    found = {"model_type": config.get("model_type"),
             "audio_channels": decoder.get("audio_channels", 1)}
    for key, value in wanted.items():
        if found[key] != value:
            raise ExportError(f"{weights.path}/config.json says {key}={shown(found[key])} but "
                              f"the base {base.given} is {key}={value!r}: another model than "
                              "the base's")


def _fit_transformers(state: Mapping[str, TensorLike], path: Path, base: Base,
                      base_encodec: StateDict, base_folder: Path | None) -> Fitted:
    from ..transformers_format.mapping import projection_modules
    from ..transformers_format.reverse import audiocraft_states, with_decoder_prefix

    try:
        unmapped = audiocraft_states(with_decoder_prefix(state), base.state, base_encodec,
                                     projection_modules(base.cfg))
    except ValueError as exc:  # a base key transformers' format has no place for
        raise ExportError(f"{path} holds transformers' weights, but the base {base.given} is "
                          f"not a model transformers' Musicgen represents ({exc})") from exc
    _refuse_misfit(path, base, unmapped.lm, unexpected=unmapped.unexpected,
                   extra_problems=unmapped.mismatched)
    encodec = _changed_encodec(unmapped.encodec, path, base_encodec)
    return Fitted(unmapped.lm, encodec,
                  text_encoder=_compare_text_encoder(unmapped.text_encoder, path, base_folder))


def _fit_audiocraft(weights: WeightsFile, base: Base, base_encodec: StateDict) -> Fitted:
    prefix = name_prefix(weights.state, base.state)
    lm, rest = {}, {}
    for key, tensor in weights.state.items():
        if key.startswith(prefix) and key[len(prefix):] in base.state:
            lm[key[len(prefix):]] = tensor
        else:
            rest[key] = tensor
    # a whole MusicGen's state (model.lm.*, model.compression_model.*): its EnCodec too
    sibling = prefix[:-len("lm.")] + "compression_model." if prefix.endswith("lm.") else None
    encodec = {key[len(sibling):]: rest.pop(key) for key in list(rest)
               if sibling and key.startswith(sibling)}
    _refuse_misfit(weights.path, base, lm, unexpected=list(rest))
    if prefix:
        logger.info("%s: names prefixed with %r (stripped)", weights.path, prefix)
    return Fitted(lm, _changed_encodec(encodec, weights.path, base_encodec),
                  prefix=prefix or None)


def name_prefix(keys: Iterable[str], base_keys: Iterable[str]) -> str:
    """The prefix (``module.``, ``lm.``, ``model.lm.``...) that, stripped, makes the most keys
    the base's names; the shortest among equals."""
    known = set(base_keys)
    counts: dict[str, int] = {}
    for key in keys:
        for at in [0, *(i + 1 for i, c in enumerate(key) if c == ".")]:
            if key[at:] in known:
                counts[key[:at]] = counts.get(key[:at], 0) + 1
    return min(counts, key=lambda p: (-counts[p], len(p))) if counts else ""


def _refuse_misfit(path: Path, base: Base, lm: Mapping[str, TensorLike],
                   unexpected: list[str], extra_problems: Iterable[str] = ()) -> None:
    """ExportError naming the first missing, unexpected and mis-shaped keys of ``lm`` against
    the base's LM, with their counts."""
    missing = [key for key in base.state if key not in lm]
    shapes = [f"{key} {list(lm[key].shape)} (the base's {list(base.state[key].shape)})"
              for key in base.state if key in lm and lm[key].shape != base.state[key].shape]
    problems = [_listed(missing, "missing"), _listed(unexpected, "unexpected"),
                _listed(shapes, "of another shape"), *extra_problems]
    found = [p for p in problems if p]
    if found:
        size = "; a model of another size than the base" if shapes else ""
        raise ExportError(f"{path} does not fit the base {base.given} ({len(base.state)} "
                          f"tensors): {'; '.join(found)}{size}")


def _listed(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    named = ", ".join(shown(k, 120) for k in keys[:SHOWN_KEYS])
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)} {what} ({named}{more})"


def _changed_encodec(encodec: Mapping[str, TensorLike], path: Path,
                     base_encodec: StateDict) -> StateDict:
    """The EnCodec the weights carry when it differs from the base's; {} when they carry none
    or the base's own."""
    if not encodec:
        return {}
    if not base_encodec:
        raise ExportError(f"{path} carries an EnCodec, but the base's compression model is not "
                          f"a file whose weights can be compared (a pointer, or "
                          f"{setting('compression', '...')} was chosen); give a base that "
                          "ships its EnCodec")
    held = {int(m.group(1)) for k in encodec if (m := _QUANTIZER_LAYER.match(k))}
    wanted = [k for k in base_encodec if not (
        (m := _QUANTIZER_LAYER.match(k)) and int(m.group(1)) not in held)]
    missing = [k for k in wanted if k not in encodec]
    unexpected = [k for k in encodec if k not in base_encodec]
    problems = [p for p in (_listed(missing, "missing"), _listed(unexpected, "unexpected")) if p]
    if problems:
        raise ExportError(f"{path}: its EnCodec does not fit the base's: {'; '.join(problems)}")
    shapes = [k for k in encodec if encodec[k].shape != base_encodec[k].shape]
    if shapes:
        raise ExportError(f"{path}: its EnCodec does not fit the base's: "
                          f"{_listed(shapes, 'of another shape')}")
    if _all_equal(encodec, base_encodec):
        return {}
    logger.info("%s carries an EnCodec that differs from the base's: it is released", path)
    return dict(encodec)


def _all_equal(ours: Mapping[str, TensorLike], theirs: Mapping[str, TensorLike]) -> bool:
    """Whether every tensor of ``ours`` equals ``theirs``' of the same name (values compared
    in the dtype of ``theirs``)."""
    for key, tensor in ours.items():
        other = as_tensor(theirs[key])
        if not torch.equal(as_tensor(tensor).to(other.dtype), other):
            return False
    return True


def _compare_text_encoder(text_encoder: Mapping[str, TensorLike], path: Path,
                          base_folder: Path | None) -> str | None:
    """How the weights' T5 compares with the base's; ExportError when it was fine-tuned (an
    AudioCraft MusicGen with a frozen T5 does not hold one)."""
    if not text_encoder:
        return None
    if base_folder is None:
        return "not compared (the base has no transformers files)"
    from ..untrusted.weights_files import read_safetensors

    base_state = _untied({k[len("text_encoder."):]: v
                          for k, v in read_safetensors(base_folder / "model.safetensors").items()
                          if k.startswith("text_encoder.")})
    text_encoder = _untied(text_encoder)
    if set(base_state) != set(text_encoder) or not _all_equal(text_encoder, base_state):
        raise ExportError(f"{path}: its text encoder (T5) differs from the base's: AudioCraft's "
                          "MusicGen uses a frozen T5 and cannot hold a fine-tuned one")
    return "equal to the base's"


# T5's embedding table, tied: save_pretrained writes it once, under shared.weight
T5_TIED = {"encoder.embed_tokens.weight": "shared.weight"}


def _untied(state: Mapping[str, TensorLike]) -> dict[str, TensorLike]:
    """A T5 state with its tied tensors under every name, however it was saved."""
    return {**{alias: state[name] for alias, name in T5_TIED.items() if name in state},
            **state}


def _with_encodec(compression: CompressionRelease | None, encodec: StateDict,
                  path: Path) -> CompressionRelease:
    """The base's compression model with the weights' EnCodec tensors in place of its own."""
    # _changed_encodec found the base's EnCodec state to compare with: it has a config
    assert compression is not None and compression.state is not None
    cfg = cfg_of_yaml(compression.package.get("xp.cfg"))
    assert cfg is not None
    state = {**compression.state, **encodec}
    package = release_package(state, cfg)
    return CompressionRelease(package, str(path), source=path, state_key="weights",
                              state=state)
