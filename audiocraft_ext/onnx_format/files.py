"""The ONNX part of a release (``output.onnx=true``), as the export sees it: whether it can be
made, writing it and proving it, each through the toolchain's child process (:mod:`.child`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import ExportError, setting
from ..families import Family
from ..transformers_format.files import greedy_agrees
from ..transformers_format.mapping import audio_channels, melody_attributes
from ..writing.release_format import ONNX_DIR, ONNX_FILES, settle
from . import toolchain

# what the proof accepts (float32): both run transformers' graph, rounding aside
MAX_ABS_DIFF = 1e-4  # the text encoder, the decoder's logits over the first step
MAX_REL_DIFF = 1e-4  # the logits over every step and EnCodec's audio, relative to their scale
MAX_GRAPH_BYTES = 2 << 30  # a protobuf's limit: a larger graph keeps its weights beside it


def refusal(family: Family, cfg: DictConfig, transformers: bool,
            lm_parameters: int) -> str | None:
    """Why ``output.onnx=true`` cannot be done for this release (one line), or None."""
    if not transformers:
        return (f"it exports the transformers half: add {setting('output.transformers', True)}")
    if family.model_class != "MusicGen":
        return f"only MusicGen's ONNX export is proven, not {family.model_class}'s"
    if melody_attributes(cfg) is not None:
        return ("Optimum exports MusicgenForConditionalGeneration only, not a MusicGen-melody's "
                "MusicgenMelodyForConditionalGeneration")
    if audio_channels(cfg) != 1:
        return "a stereo MusicGen's ONNX export is not proven yet"
    if lm_parameters * 4 >= MAX_GRAPH_BYTES:
        return (f"its decoder ({lm_parameters / 1e9:.1f} billion parameters, float32) would be "
                "a graph over 2 GB, whose weights ONNX keeps in a file beside it: not proven "
                "yet")
    return toolchain.refusal()


def write_onnx_files(folder: Path, quantize: bool) -> dict[str, Any]:
    """``folder/onnx/``: the three graphs (and their 8-bit versions); what the manifest
    records."""
    folder = folder.resolve()  # the child runs elsewhere
    out = folder / ONNX_DIR
    made = toolchain.run_child("export", str(folder), str(out),
                               *(["--quantize"] if quantize else []))
    foreign = sorted(set(made["files"]) - ONNX_FILES)
    if foreign:  # the staging folder is removed only when it holds release files alone
        raise ExportError(f"the ONNX export wrote {foreign[0]!r}, which a release does not hold")
    settle(out, sorted(made["files"]))
    return {"files": {f"{ONNX_DIR}/{name}": size for name, size in made["files"].items()},
            "toolchain": made["versions"], "quantized": quantize,
            "export_seconds": made["seconds"]}


def prove_onnx(folder: Path, frames: int, quantized: bool) -> dict[str, Any]:
    """ONNX Runtime against transformers' model of the same folder (see :func:`.child.prove`);
    raises ExportError when they differ."""
    folder = folder.resolve()
    proof = toolchain.run_child("prove", str(folder), str(folder / ONNX_DIR), "--frames",
                                str(frames), *(["--quantized"] if quantized else []))
    problems = [name for name in ("text_encoder_max_abs_diff", "logits_max_abs_diff_first_step")
                if not proof[name] <= MAX_ABS_DIFF]
    problems += [name for name in ("logits_max_rel_diff", "decode_max_rel_diff")
                 if not proof[name] <= MAX_REL_DIFF]
    if not greedy_agrees(proof["greedy_first_difference"], frames):
        problems += [name for name in proof if name.startswith("greedy_identical_frames")
                     and proof[name] != frames] or ["greedy_first_difference"]
    if proof["other_text_changes_codes"] is not True:
        problems.append("other_text_changes_codes")
    if problems:
        raise ExportError("ONNX Runtime differs from transformers' model: " + ", ".join(
            f"{name} {proof[name]}" for name in problems))
    return {"max_abs_diff_allowed": MAX_ABS_DIFF, "max_rel_diff_allowed": MAX_REL_DIFF,
            **proof}
