"""Prove a release folder with stock AudioCraft: reload, compare every tensor, generate."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import torch
from omegaconf import DictConfig
from omegaconf.errors import UnsupportedInterpolationType

from ..config import ValidateConfig, ValidateLevel
from ..errors import ExportError, first_line, setting, shown
from ..reporting.manifest import ValidationReport
from ..reporting.progress import LOG_EVERY_SECONDS, byte_progress, step_progress
from ..reporting.samples import Clip
from ..untrusted.lazy_tensors import (
    Scratch,
    StoredTensor,
    TensorLike,
    as_tensor,
    contiguous_stride,
    load_into,
)
from ..untrusted.safe_load import load_checkpoint
from ..untrusted.states import StateDict
from ..untrusted.xp_config import needed_value, raw_value
from ..writing.compression import CompressionRelease
from ..writing.release_format import COMPRESSION_FILE, LM_FILE, save_package
from ..writing.torch_zip import WrittenZip
from .lean_loading import lean_loading

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """How stock audiocraft loads the LMs of one solver family."""

    model_class: str  # whose get_pretrained must accept the release
    # reloaded with load_lm_model_magnet (which needs the compression model's frame rate)
    magnet: bool = False
    extend_stride: float | None = None  # get_pretrained asserts segment_duration exceeds it


FAMILIES = {
    "musicgen": Family("MusicGen", extend_stride=18.0),
    "audiogen": Family("AudioGen", extend_stride=2.0),
    "magnet": Family("MAGNeT", magnet=True),
    "audio_magnet": Family("MAGNeT", magnet=True),
}


def import_audiocraft_meanwhile() -> None:
    """Start importing audiocraft's models (several seconds of Python) on a thread, so that it
    overlaps the writing of the release, which mostly waits on the kernel and the hasher
    thread. The checks import it again: they wait for this import, or redo a failed one and
    report its error themselves."""
    global _importing
    if "audiocraft.models" not in sys.modules:
        logger.info("importing audiocraft while the release is written")
        _importing = threading.Thread(target=_import_models, name="import-audiocraft")
        _importing.start()


_importing: threading.Thread | None = None


def _import_audiocraft() -> None:
    """Import audiocraft's models, saying so when it takes a while (a multi-second import)."""
    if _importing is not None and _importing.is_alive():
        logger.info("waiting for audiocraft's import to finish")
        started = time.monotonic()
        _importing.join(LOG_EVERY_SECONDS)
        while _importing.is_alive():
            logger.info("still importing audiocraft (%.0f s)", time.monotonic() - started)
            _importing.join(LOG_EVERY_SECONDS)
    elif "audiocraft.models" not in sys.modules:
        logger.info("importing audiocraft")
    import audiocraft.models  # noqa: F401  (the import is the point)


def _import_models() -> None:
    try:
        import audiocraft.models  # noqa: F401  (imported for its side effect: the import)
    except Exception:  # noqa: BLE001  (the checks import it again and report the error)
        pass


def compare_states(expected: Mapping[str, TensorLike], actual: Mapping[str, TensorLike],
                   what: str, cast: bool = False) -> None:
    """Raise unless both hold the same keys and exactly equal tensors.

    With ``cast``, ``expected`` is first cast to each actual tensor's dtype (a float16 best
    state reloaded into a float32 model is exact, so equality still proves every value).
    Expected tensors are read (or computed) one at a time into reused buffers.
    """
    _check_same_keys(expected, actual, what)
    scratch = Scratch()
    differ = []
    total = sum(t.numel() * t.element_size() for t in expected.values())
    logger.info("comparing %d tensors (%.1f MB) of %s with the source", len(expected),
                total / 1e6, what)
    advance, close = byte_progress(total, f"comparing {what}")
    for key, stored in expected.items():
        advance(stored.numel() * stored.element_size())
        want, got = load_into(stored, scratch), as_tensor(actual[key])
        if not cast and got.dtype != want.dtype:
            differ.append(f"{key} ({want.dtype} became {got.dtype})")
        elif got.shape != want.shape:
            differ.append(f"{key} (shape {tuple(want.shape)} became {tuple(got.shape)})")
        else:
            if want.dtype != got.dtype:
                want = scratch.tensor("compare", want.shape, got.dtype).copy_(want)
            if not same_bits(got.cpu(), want):
                differ.append(key)
    close()
    if differ:
        raise ExportError(f"{what}: {len(differ)} of {len(expected)} tensors differ from the "
                          f"source state, first {differ[0]}")


def _check_same_keys(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise ExportError(f"{what}: keys differ from the source state: "
                          + ", ".join(p for p in parts if p))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold bit-identical elements (NaN equals the same NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool or a.element_size() == 0 or a.numel() == 0:
        return torch.equal(a, b)
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if bits is None:  # complex128: two float64 per element
        return same_bits(torch.view_as_real(a), torch.view_as_real(b))
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


@contextmanager
def _timed(entry: dict[str, Any], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``entry[key]`` (a part of a check's time)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        entry[key] = round(entry.get(key, 0.0) + time.perf_counter() - start, 3)


class _Checks:
    """Runs named checks, timing each and recording the outcome for the manifest."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    @contextmanager
    def check(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"check": name, "ok": False}
        self.results.append(entry)
        start = time.perf_counter()
        try:
            yield entry
            entry["ok"] = True
        except ExportError as exc:
            entry["error"] = str(exc)
            raise
        except Exception as exc:  # audiocraft's own failures: one line, with the check's name
            entry["error"] = (_state_dict_mismatch(str(exc)) or _refused_resolver(exc)
                              or f"{type(exc).__name__}: {first_line(exc)}")
            raise ExportError(f"validation '{name}' failed: {entry['error']}") from exc
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)
            compared = (f", comparing {entry['compare_seconds']:.2f}s"
                        if "compare_seconds" in entry else "")
            logger.info("check %-22s %s (%.2fs%s)", name, "ok" if entry["ok"] else "FAILED",
                        entry["seconds"], compared)


def _refused_resolver(exc: Exception) -> str | None:
    """Say why ``${resolver:...}`` failed: no resolver runs while validating (xp_config)."""
    found = re.match(r"Unsupported interpolation type (\S+)", str(exc))
    if not isinstance(exc, UnsupportedInterpolationType) or found is None:
        return None
    return (f"xp.cfg uses the resolver {shown(found[1])}, which is never run on the exporting "
            "machine (it could read its environment); write the value itself into the config")


def _state_dict_mismatch(message: str) -> str | None:
    """Summarise torch's multi-line load_state_dict error in one line, or None."""
    if not message.startswith("Error(s) in loading state_dict"):
        return None
    parts, shapes = [], []
    for line in message.splitlines()[1:]:
        line = line.strip()
        keys = re.match(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", line)
        if keys:
            names = re.findall(r'"([^"]+)"', keys[2])
            parts.append(f"{len(names)} {keys[1].lower()} key{'s' * (len(names) != 1)} "
                         f"(e.g. {names[0] if names else '?'})")
        size = re.match(r"size mismatch for ([^:]+): copying a param with shape "
                        r"torch.Size\((\[.*?\])\) from checkpoint, the shape in current model "
                        r"is torch.Size\((\[.*?\])\)", line)
        if size:
            shapes.append(f"{size[1]}: {size[2]} in the file, {size[3]} for the config")
    if shapes:
        parts.append(f"{len(shapes)} wrong shape{'s' * (len(shapes) != 1)} (e.g. {shapes[0]})")
    return "the state does not match its xp.cfg: " + ", ".join(parts)


def validate_release(release_dir: Path, lm_cfg: DictConfig, lm_state: StateDict,
                     compression: CompressionRelease | None, settings: ValidateConfig,
                     written: Mapping[str, WrittenZip],
                     stand_in: CompressionRelease | None = None,
                     clips: list[Clip] | None = None) -> ValidationReport:
    """Check a (staged) release folder per ``settings.level``; raise ExportError on failure.

    ``written`` is what the writer wrote (sizes, record CRCs). ``stand_in`` is a local
    compression model to validate with when the release points at a //pretrained/ one
    (``validate.compression_model``). The clips generated are appended to ``clips``.
    Returns the manifest's report.
    """
    report = ValidationReport(settings.level.value)
    if settings.level is ValidateLevel.none:
        return report
    files = {LM_FILE: lm_state}
    if compression is not None and compression.state is not None and not compression.pretrained:
        files[COMPRESSION_FILE] = compression.state
    with ExitStack() as stack:
        load_dir = release_dir
        if stand_in is not None and compression is not None and compression.pretrained:
            load_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            os.symlink(release_dir / LM_FILE, load_dir / LM_FILE)
            save_package(stand_in.package, load_dir / COMPRESSION_FILE)
            report.compression_stand_in = stand_in.reference
            compression = stand_in
        _run_checks(release_dir, load_dir, lm_cfg, lm_state, compression, settings,
                    {name: (state, written[name]) for name, state in files.items()}, report,
                    clips if clips is not None else [])
    return report


def _run_checks(release_dir: Path, load_dir: Path, lm_cfg: DictConfig, lm_state: StateDict,
                compression: CompressionRelease | None, settings: ValidateConfig,
                files: Mapping[str, tuple[StateDict, WrittenZip]],
                report: ValidationReport, clips: list[Clip]) -> None:
    """``load``: the file, then audiocraft's load_compression_model and load_lm_model (each
    compared exactly with its source state). ``full``: the file, then X.get_pretrained, which
    runs those same two loaders: its LM and compression model are compared instead, so each
    model is built once; then generation."""
    checks = _Checks()
    report.checks = checks.results
    solver = needed_value(lm_cfg, "solver", "the LM", default="")
    family = FAMILIES.get(solver)
    if family is None:
        raise ExportError(f"cannot validate an LM of solver {shown(solver)} (known: "
                          f"{', '.join(FAMILIES)}); use {setting('validate', 'none')}")
    for name, (state, wrote) in files.items():
        with checks.check("lm_file" if name == LM_FILE else "compression_file"):
            _check_release_file(release_dir / name, state, wrote)
    full = settings.level is ValidateLevel.full and compression is not None
    if full:
        _check_segment_duration(lm_cfg, family)
    _import_audiocraft()
    from audiocraft.models import loaders

    with lean_loading(), _text_encoder_explained(lm_cfg):
        if not full:
            _check_loaders(loaders, load_dir, lm_state, compression, family, settings, checks,
                           report)
            return
        assert compression is not None
        with checks.check("get_pretrained") as entry:
            import audiocraft.models

            cls = getattr(audiocraft.models, family.model_class)
            logger.info("building %s from the release with %s.get_pretrained", cls.__name__,
                        cls.__name__)
            model = _load_pretrained(lambda: cls.get_pretrained(str(load_dir),
                                                                device=settings.device),
                                     compression.pretrained)
            entry["model_class"] = cls.__name__
            with _timed(entry, "compare_seconds"):
                if compression.state is not None:
                    compare_states(compression.state, model.compression_model.state_dict(),
                                   f"{cls.__name__}.get_pretrained's compression model",
                                   cast=True)
                compare_states(lm_state, model.lm.state_dict(),
                               f"{cls.__name__}.get_pretrained's LM", cast=True)
            entry["proves"] = ["load_compression_model", "load_lm_model_magnet"
                               if family.magnet else "load_lm_model"]
    with checks.check("generate") as entry:
        entry.update(_generate(model, settings, clips))


def _check_loaders(loaders: Any, load_dir: Path, lm_state: StateDict,
                   compression: CompressionRelease | None, family: Family,
                   settings: ValidateConfig, checks: _Checks, report: ValidationReport) -> None:
    """audiocraft's load_compression_model and load_lm_model(_magnet), each compared."""
    device = settings.device
    frame_rate = None
    if compression is None:
        report.skipped.append("compression and get_pretrained: compression=none")
    else:
        with checks.check("load_compression_model") as entry:
            logger.info("building the compression model with load_compression_model")
            model = _load_pretrained(
                lambda: loaders.load_compression_model(load_dir, device=device),
                compression.pretrained)
            if compression.state is not None:
                with _timed(entry, "compare_seconds"):
                    compare_states(compression.state, model.state_dict(),
                                   "load_compression_model", cast=True)
            frame_rate = int(model.frame_rate)
            entry.update(sample_rate=model.sample_rate, frame_rate=float(model.frame_rate))
            del model
    if family.magnet and frame_rate is None:
        report.skipped.append("load_lm_model_magnet: it needs the compression model's frame "
                              "rate")
        return
    loader = "load_lm_model_magnet" if family.magnet else "load_lm_model"
    with checks.check(loader) as entry:
        logger.info("building the LM with %s", loader)
        if family.magnet and frame_rate is not None:
            lm = loaders.load_lm_model_magnet(
                load_dir, compression_model_frame_rate=frame_rate, device=device)
        else:
            lm = loaders.load_lm_model(load_dir, device=device)
        with _timed(entry, "compare_seconds"):
            compare_states(lm_state, lm.state_dict(), "reloaded LM", cast=True)
        del lm


def validate_compression_release(release_dir: Path, state: StateDict,
                                 settings: ValidateConfig,
                                 written: Mapping[str, WrittenZip],
                                 clips: list[Clip] | None = None) -> ValidationReport:
    """Check an EnCodec-only release: the file, CompressionModel.get_pretrained(file) with an
    exact comparison, and (``full``) an encode/decode round trip, whose input and output are
    appended to ``clips``."""
    report = ValidationReport(settings.level.value)
    if settings.level is ValidateLevel.none:
        return report
    checks = _Checks()
    report.checks = checks.results
    path = release_dir / COMPRESSION_FILE
    with checks.check("compression_file"):
        _check_release_file(path, state, written[COMPRESSION_FILE])
    _import_audiocraft()
    from audiocraft.models import CompressionModel

    with checks.check("get_pretrained") as entry, lean_loading():
        logger.info("building the compression model with CompressionModel.get_pretrained")
        model = CompressionModel.get_pretrained(str(path), device=settings.device)
        with _timed(entry, "compare_seconds"):
            compare_states(state, model.state_dict(), "CompressionModel.get_pretrained",
                           cast=True)
        entry["model_class"] = type(model).__name__
    if settings.level is ValidateLevel.full:
        with checks.check("encode_decode") as entry:
            entry.update(_round_trip(model, settings, clips if clips is not None else []))
    return report


def _check_release_file(path: Path, state: StateDict, written: WrittenZip) -> None:
    """The file holds what was written, without reading its tensors' bytes: its size, its
    layout, each tensor's dtype, shape and view, and each storage record's CRC-32 in its
    directory equal to the one computed on the bytes as they were written (for a record
    copied as it is, also to the source's own). The bytes themselves are proven by the load
    checks, which compare every value."""
    size = path.stat().st_size
    if size != written.size:
        raise ExportError(f"{path.name} holds {size} bytes; {written.size} were written")
    pkg = load_checkpoint(path)
    if sorted(pkg) != ["best_state", "exported", "version", "xp.cfg"] \
            or not isinstance(pkg["xp.cfg"], str) or pkg["exported"] is not True:
        raise ExportError(f"{path.name} does not have the release layout: keys {sorted(pkg)}")
    released = pkg["best_state"]
    _check_same_keys(state, released, path.name)
    differ = [f"{key} ({problem})" for key, want in state.items()
              if (problem := _record_problem(want, released[key], written))]
    if differ:
        raise ExportError(f"{path.name}: {len(differ)} of {len(state)} tensors are not as "
                          f"written, first {differ[0]}")


def _record_problem(want: TensorLike, got: Any, written: WrittenZip) -> str | None:
    """How the released tensor ``got`` differs from what was written for ``want``, or None."""
    if not isinstance(got, StoredTensor):
        return f"a {type(got).__name__}, not a stored tensor"
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{want.dtype} {tuple(want.shape)} became {got.dtype} {tuple(got.shape)}"
    archive, record = got.storage.archive, got.storage.record
    wrote = written.records.get(archive.prefix + record)
    if wrote is None or archive.data_offset(record) != wrote.offset:
        return f"its record {record} is not where it was written"
    if archive.crc(record) != wrote.crc:
        return "its record's CRC-32 differs from the bytes written"
    if isinstance(want, StoredTensor):  # copied as it is: same view of the same bytes
        if (got.offset, got.stride) != (want.offset, want.stride):
            return "its view (offset, stride) differs from the source's"
        if wrote.crc != want.storage.archive.crc(want.storage.record):
            return "its bytes differ from the source record's"
    elif got.offset != 0 or got.stride != contiguous_stride(got.size):
        return "a computed tensor not stored contiguously"
    return None


def probe_signal(seconds: float, sample_rate: int, channels: int, seed: int) -> torch.Tensor:
    """A signal worth listening to after a round trip: a rising tone over a soft chord with a
    little noise, [1, channels, samples]."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    sweep = 220.0 * 4 ** (t / max(seconds, 1e-3))  # two octaves up over the clip
    phase = 2 * math.pi * torch.cumsum(sweep, 0) / sample_rate
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (261.63, 329.63, 392.0))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
    wav = 0.3 * torch.sin(phase) + 0.1 * chord + 0.01 * noise
    return wav.float().expand(1, channels, -1).clone()


def _round_trip(model: Any, settings: ValidateConfig, clips: list[Clip]) -> dict[str, Any]:
    wav = probe_signal(settings.duration, model.sample_rate, model.channels, settings.seed)
    samples = wav.shape[-1]
    with torch.no_grad():
        codes, scale = model.encode(wav)
        frames = codes.shape[-1]
        if tuple(codes.shape[:2]) != (1, model.num_codebooks) or codes.is_floating_point():
            raise ExportError(f"encode returned codes of shape {tuple(codes.shape)} and dtype "
                              f"{codes.dtype}, expected (1, {model.num_codebooks}, frames) ints")
        if int(codes.min()) < 0 or int(codes.max()) >= model.cardinality:
            raise ExportError(f"encode returned codes outside [0, {model.cardinality})")
        decoded = model.decode(codes, scale)
    if tuple(decoded.shape[:2]) != (1, model.channels) or abs(decoded.shape[-1] - samples) > \
            samples // frames + 1:
        raise ExportError(f"decode returned shape {tuple(decoded.shape)} for {samples} samples")
    if not torch.isfinite(decoded).all():
        raise ExportError("decode produced non-finite samples")
    clips += [Clip("input", wav[0], model.sample_rate, "test signal: a rising tone over a chord"),
              Clip("reconstruction", decoded[0], model.sample_rate,
                   f"the test signal encoded to {model.num_codebooks} codebooks and decoded")]
    return {"sample_rate": model.sample_rate, "frame_rate": float(model.frame_rate),
            "codes": list(codes.shape), "decoded": list(decoded.shape)}


def _check_segment_duration(lm_cfg: DictConfig, family: Family) -> None:
    if family.extend_stride is None:
        return
    segment = needed_value(lm_cfg, "dataset.segment_duration", "the LM")
    if type(segment) not in (int, float):
        raise ExportError(f"{family.model_class}.get_pretrained needs a number of seconds in "
                          f"xp.cfg's dataset.segment_duration, which holds {shown(segment)}")
    if segment <= family.extend_stride:
        raise ExportError(
            f"{family.model_class}.get_pretrained rejects this model: it was trained on "
            f"dataset.segment_duration={segment:g} s, which must be above "
            f"{family.extend_stride:g} s (the default extend_stride it asserts on); retrain "
            f"with longer segments or use {setting('validate', 'load')} to skip the "
            "get_pretrained check")


def _load_pretrained(load: Callable[[], Any], pretrained: str | None) -> Any:
    """Run ``load``; explain the failure of a //pretrained/ compression model that needs the
    network (any other failure is the check's own, and is reported as such)."""
    try:
        return load()
    except Exception as exc:
        if pretrained is None or not _from_the_network(exc):
            raise
        raise ExportError(
            f"the release points at the pretrained compression model {pretrained!r}, which "
            f"could not be fetched here ({type(exc).__name__}); it comes from the Hugging Face "
            "hub on first use: run where the hub or its cache (HF_HOME) is reachable, or "
            f"validate offline with {setting('validate.compression_model', '<local copy>')}"
            ) from exc


@contextmanager
def _text_encoder_explained(lm_cfg: DictConfig) -> Iterator[None]:
    """Explain a check that failed because the LM's T5 text encoder, which audiocraft builds
    with the LM, could not be loaded here (offline, not in the cache)."""
    try:
        yield
    except ExportError as exc:
        cause = exc.__cause__
        t5 = _t5_conditioners(lm_cfg)
        # transformers says "cannot load" with an OSError (on 4.x without its cause)
        from audiocraft.modules.conditioners import T5Conditioner

        if not t5 or cause is None or not _raised_in(cause, T5Conditioner.__init__.__code__) \
                or not (isinstance(cause, OSError) or _from_the_network(cause)):
            raise
        needs = ", ".join(f"{shown(model)} (text conditioner {shown(name)})"
                          for name, model in t5.items())
        raise ExportError(
            f"validation cannot build the LM: it needs the T5 model {needs}, which transformers "
            f"could not load here ({type(cause).__name__}); T5 comes from the Hugging Face Hub "
            "or a local cache (HF_HOME; HF_HUB_OFFLINE=1 reads only the cache): run where "
            "either holds it, or use validate=none, the one level that does "
            "not build the LM") from exc


def _t5_conditioners(lm_cfg: DictConfig) -> dict[str, str]:
    """The LM's T5 conditioners (xp.cfg's ``conditioners``): name -> T5 model name."""
    conditioners = raw_value(lm_cfg, "conditioners")
    if not isinstance(conditioners, DictConfig):
        return {}
    names = [str(name) for name in conditioners]
    return {name: str(raw_value(lm_cfg, f"conditioners.{name}.t5.name", "?")) for name in names
            if raw_value(lm_cfg, f"conditioners.{name}.model") == "t5"}


def _raised_in(exc: BaseException, code: CodeType) -> bool:
    """Whether ``exc`` passed through the function whose code is ``code`` on its way up."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


# Failures to reach the hub, by class name (huggingface_hub, requests, urllib3 and httpx are
# not imported here): an offline machine, a missing cache entry, a refused or timed-out
# connection. A wrong model name (the hub's 404) is not among them: that is the check's own.
_NETWORK_FAILURES = frozenset({
    "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "Timeout", "TimeoutException", "NewConnectionError", "MaxRetryError",
    "NameResolutionError", "ProxyError", "SSLError"})


def _from_the_network(exc: BaseException) -> bool:
    """Whether ``exc``, or a cause it chains, is a failure to reach the network."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)) \
                or type(current).__name__ in _NETWORK_FAILURES:
            return True
        # an explicit cause, else the exception being handled (unless the raise hid it)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return False


def _generate(model: Any, settings: ValidateConfig, clips: list[Clip]) -> dict[str, Any]:
    if type(model).__name__ == "MAGNeT":  # generates its training segment_duration, always
        model.set_generation_params()
    else:
        model.set_generation_params(duration=settings.duration)
    expected = (1, model.audio_channels,
                int(model.duration * model.frame_rate) * model.sample_rate // model.frame_rate)
    prompts: dict[str, Callable[[], torch.Tensor]] = {
        "unconditional": lambda: model.generate_unconditional(1, progress=True)}
    if model.lm.condition_provider.text_conditions:
        prompts["text"] = lambda: model.generate([settings.description], progress=True)
    shapes = {}
    for name, run in prompts.items():
        logger.info("generating %g s of audio (%s)", model.duration, name)
        update, close = step_progress(f"generating ({name})")
        # replaces audiocraft's default callback, which prints to stdout (the release path's)
        model.set_custom_progress_callback(update)
        torch.manual_seed(settings.seed)
        try:
            wav = run()
        finally:
            close()
            model.set_custom_progress_callback(None)
        if tuple(wav.shape) != expected:
            raise ExportError(f"{name} generation returned shape {tuple(wav.shape)}, "
                              f"expected {expected}")
        if not torch.isfinite(wav).all():
            raise ExportError(f"{name} generation produced non-finite samples")
        shapes[name] = list(wav.shape)
        clips.append(Clip(name, wav[0], model.sample_rate,
                          settings.description if name == "text" else None))
    return {"sample_rate": model.sample_rate, "frame_rate": float(model.frame_rate),
            "duration": model.duration, "shapes": shapes}
