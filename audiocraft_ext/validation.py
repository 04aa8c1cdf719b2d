"""Prove a release folder with stock AudioCraft: reload, compare every tensor, generate."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from omegaconf import DictConfig

from .compression import CompressionRelease
from .config import ValidateConfig, ValidateLevel
from .errors import ExportError, first_line
from .release import COMPRESSION_FILE, LM_FILE, save_package
from .safe_load import load_checkpoint
from .states import StateDict
from .stored_tensor import TensorLike, as_tensor

logger = logging.getLogger(__name__)

# cfg.solver -> the audiocraft model class whose get_pretrained must accept the release.
MODEL_CLASSES = {"musicgen": "MusicGen", "audiogen": "AudioGen"}
# Generation-time `extend_stride` defaults: get_pretrained asserts segment_duration exceeds it.
_EXTEND_STRIDE = {"musicgen": 18.0, "audiogen": 2.0}


def compare_states(expected: Mapping[str, TensorLike], actual: Mapping[str, TensorLike],
                   what: str, cast: bool = False) -> None:
    """Raise unless both hold the same keys and exactly equal tensors.

    With ``cast``, ``expected`` is first cast to each actual tensor's dtype (a float16 best
    state reloaded into a float32 model is exact, so equality still proves every value).
    """
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise ExportError(f"{what}: keys differ from the source state: "
                          + ", ".join(p for p in parts if p))
    differ = []
    for key, stored in expected.items():
        want, got = as_tensor(stored), as_tensor(actual[key])
        if not cast and got.dtype != want.dtype:
            differ.append(f"{key} ({want.dtype} became {got.dtype})")
        elif got.shape != want.shape:
            differ.append(f"{key} (shape {tuple(want.shape)} became {tuple(got.shape)})")
        elif not torch.equal(got.cpu(), want.to(got.dtype)):
            differ.append(key)
    if differ:
        raise ExportError(f"{what}: {len(differ)} of {len(expected)} tensors differ from the "
                          f"source state, first {differ[0]}")


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
            entry["error"] = _state_dict_mismatch(str(exc)) or f"{type(exc).__name__}: {first_line(exc)}"
            raise ExportError(f"validation '{name}' failed: {entry['error']}") from exc
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)
            logger.info("check %-22s %s (%.2fs)", name, "ok" if entry["ok"] else "FAILED",
                        entry["seconds"])


def _state_dict_mismatch(message: str) -> Optional[str]:
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
                     compression: Optional[CompressionRelease], settings: ValidateConfig,
                     stand_in: Optional[CompressionRelease] = None) -> dict[str, Any]:
    """Check a (staged) release folder per ``settings.level``; raise ExportError on failure.

    ``stand_in`` is a local tokenizer to validate with when the release points at a
    //pretrained/ one (``validate.tokenizer``). Returns the report stored under
    ``validation`` in the manifest.
    """
    level = ValidateLevel(settings.level)
    report: dict[str, Any] = {"level": level.value, "checks": [], "skipped": []}
    if level is ValidateLevel.none:
        return report
    with ExitStack() as stack:
        load_dir = release_dir
        if stand_in is not None and compression is not None and compression.pretrained:
            load_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            os.symlink(release_dir / LM_FILE, load_dir / LM_FILE)
            save_package(stand_in.package, load_dir / COMPRESSION_FILE)
            report["tokenizer_stand_in"] = stand_in.reference
            compression = stand_in
        _run_checks(release_dir, load_dir, lm_cfg, lm_state, compression, settings, report)
    return report


def _run_checks(release_dir: Path, load_dir: Path, lm_cfg: DictConfig, lm_state: StateDict,
                compression: Optional[CompressionRelease], settings: ValidateConfig,
                report: dict[str, Any]) -> None:
    from audiocraft.models import loaders

    level = ValidateLevel(settings.level)
    checks = _Checks()
    report["checks"] = checks.results
    device = settings.device
    solver = str(lm_cfg.get("solver", ""))

    with checks.check("lm_file"):
        pkg = load_checkpoint(release_dir / LM_FILE)
        if sorted(pkg) != ["best_state", "exported", "version", "xp.cfg"] \
                or not isinstance(pkg["xp.cfg"], str) or pkg["exported"] is not True:
            raise ExportError(f"{LM_FILE} does not have the release layout: keys {sorted(pkg)}")
        compare_states(lm_state, pkg["best_state"], LM_FILE)
        del pkg
    with checks.check("load_lm_model"):
        lm = loaders.load_lm_model(release_dir, device=device)
        compare_states(lm_state, lm.state_dict(), "load_lm_model", cast=True)
        del lm
    if compression is None:
        report["skipped"].append("compression and get_pretrained: compression=none")
        return
    if compression.state is not None:
        with checks.check("load_compression_model"):
            model = loaders.load_compression_model(load_dir, device=device)
            compare_states(compression.state, model.state_dict(), "load_compression_model",
                           cast=True)
            del model
    else:
        with checks.check("load_compression_model"):
            _load_pretrained_tokenizer(lambda: loaders.load_compression_model(load_dir,
                                                                              device=device),
                                       compression.pretrained)
    if level is ValidateLevel.load:
        return
    if solver not in MODEL_CLASSES:
        raise ExportError(f"validate=full does not know the model class for solver {solver!r} "
                          f"(known: {', '.join(MODEL_CLASSES)}); use validate=load")
    _check_segment_duration(lm_cfg, solver)
    with checks.check("get_pretrained") as entry:
        import audiocraft.models

        cls = getattr(audiocraft.models, MODEL_CLASSES[solver])
        model = _load_pretrained_tokenizer(
            lambda: cls.get_pretrained(str(load_dir), device=device), compression.pretrained)
        entry["model_class"] = cls.__name__
    with checks.check("generate") as entry:
        entry.update(_generate(model, settings))


def _check_segment_duration(lm_cfg: DictConfig, solver: str) -> None:
    segment = float(lm_cfg.dataset.segment_duration)
    stride = _EXTEND_STRIDE[solver]
    if segment <= stride:
        raise ExportError(
            f"{MODEL_CLASSES[solver]}.get_pretrained rejects this model: it was trained on "
            f"dataset.segment_duration={segment:g} s, which must be above {stride:g} s (the "
            "default extend_stride it asserts on); retrain with longer segments or use "
            "validate=load to skip the get_pretrained check")


def _load_pretrained_tokenizer(load: Callable[[], Any], pretrained: Optional[str]) -> Any:
    """Run ``load``; explain the failure of a //pretrained/ tokenizer that needs the network."""
    try:
        return load()
    except Exception as exc:
        if pretrained is None or isinstance(exc, ExportError):
            raise
        raise ExportError(
            f"the release points at the pretrained tokenizer {pretrained!r}, which could not "
            f"be loaded here ({type(exc).__name__}); it is fetched from the Hugging Face hub "
            "on first use: run where the hub or its cache (HF_HOME) is reachable, or validate "
            "offline with validate.tokenizer=<local copy of that tokenizer>") from exc


def _generate(model: Any, settings: ValidateConfig) -> dict[str, Any]:
    model.set_generation_params(duration=settings.duration)
    expected = (1, model.audio_channels,
                int(settings.duration * model.frame_rate) * model.sample_rate // model.frame_rate)
    prompts: dict[str, Callable[[], torch.Tensor]] = {
        "unconditional": lambda: model.generate_unconditional(1)}
    if model.lm.condition_provider.text_conditions:
        prompts["text"] = lambda: model.generate([settings.description])
    shapes = {}
    for name, run in prompts.items():
        torch.manual_seed(settings.seed)
        wav = run()
        if tuple(wav.shape) != expected:
            raise ExportError(f"{name} generation returned shape {tuple(wav.shape)}, "
                              f"expected {expected}")
        if not torch.isfinite(wav).all():
            raise ExportError(f"{name} generation produced non-finite samples")
        shapes[name] = list(wav.shape)
    return {"sample_rate": model.sample_rate, "duration": settings.duration, "shapes": shapes}
