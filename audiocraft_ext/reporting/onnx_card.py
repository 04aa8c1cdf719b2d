"""The model card's ONNX section (``output.onnx=true``): the files, the JavaScript a user of
Transformers.js runs, and what the export proved with ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from .card_text import fenced, literal


def onnx_section(onnx: Mapping[str, Any], folder: str) -> list[str]:
    """The section's lines."""
    names = sorted(PurePosixPath(name).name for name in onnx["files"])
    quantized = bool(onnx.get("quantized"))
    tools = ", ".join(f"{name} {version}" for name, version in onnx["toolchain"].items())
    path = PurePosixPath(folder)
    lines = ["## Run it with ONNX Runtime or Transformers.js\n",
             f"`onnx/` holds the model exported by Optimum ({tools}) in the layout Optimum "
             "and Transformers.js read: " + ", ".join(f"`{name}`" for name in names)
             + " (`decoder_model_merged.onnx` holds the decoder with and without its KV cache"
             + (", `*_quantized.onnx` its 8-bit weights" if quantized else "") + "). With "
             "Transformers.js (`npm install @huggingface/transformers`), in Node or the "
             "browser:", ""]
    lines += fenced([
        "import { env, AutoTokenizer, MusicgenForConditionalGeneration } from "
        "'@huggingface/transformers';", "",
        "env.allowRemoteModels = false;  // this folder, not the Hub",
        f"env.localModelPath = {literal(str(path.parent))};",
        f"const tokenizer = await AutoTokenizer.from_pretrained({literal(path.name)});",
        f"const model = await MusicgenForConditionalGeneration.from_pretrained({literal(path.name)}"
        f", {{ dtype: 'fp32' }});" + ("  // 'q8': the 8-bit graphs" if quantized else ""),
        "const inputs = tokenizer('warm lo-fi piano with soft drums');",
        "const audio = await model.generate({ ...inputs, max_new_tokens: 256 });  // "
        "[batch, channels, samples]"], "js")
    proof = onnx.get("proof")
    if proof:
        lines += ["", *_proof(proof)]
    return [*lines, ""]


def parted(proof: Mapping[str, Any]) -> str:
    """Where two stacks' greedy codes first part, when they do (past the frames every run must
    agree on), in the card's words."""
    first = proof.get("greedy_first_difference")
    if first is None:
        return ""
    return (f" (the stacks first part at frame {first}, where a close choice between two "
            "codes can tip either way with their rounding)")


def _proof(proof: Mapping[str, Any]) -> list[str]:
    frames = proof["frames"]
    speed = proof["ms_per_frame"]
    changes = "changes the codes of both" if proof["other_text_changes_codes"] \
        else "does not change the codes"
    items = [
        f"the text encoder's states at most {proof['text_encoder_max_abs_diff']:.2g} apart",
        f"the decoder's logits on the inputs of a greedy run, step by step: "
        f"{proof['logits_max_abs_diff_first_step']:.2g} at the first step (no cache), at most "
        f"{proof['logits_max_abs_diff']:.2g} over all ({proof['logits_max_rel_diff']:.2g} of "
        "their scale, with the KV cache)",
        f"greedy decoding: {proof['greedy_identical_frames']} of {frames} identical frames "
        f"with guidance {proof['guidance_scale']:g}, "
        f"{proof['greedy_identical_frames_no_guidance']} of {frames} without, "
        f"{proof['greedy_identical_frames_other_text']} of {frames} for another text, which "
        f"{changes}{parted(proof)}",
        f"EnCodec decoding at most {proof['decode_max_abs_diff']:.2g} apart "
        f"({proof['decode_max_rel_diff']:.2g} of the audio's scale)",
        f"{speed['onnxruntime']:g} ms per frame with ONNX Runtime, {speed['pytorch']:g} with "
        f"PyTorch (greedy generation and decoding, {proof.get('threads', 1)} CPU thread(s) "
        "each)"]
    quantized = proof.get("quantized")
    if quantized:
        items.append(f"the 8-bit graphs: {quantized['greedy_identical_frames']} of {frames} "
                     "greedy frames identical (8-bit weights change the pick between close "
                     f"codes), EnCodec decoding {quantized['decode_max_abs_diff']:.2g} apart")
    return ["Proven with ONNX Runtime against transformers' PyTorch model of this folder when "
            f"exported (float32, {frames} frames):", "",
            *(f"- {item}{'.' if i == len(items) - 1 else ';'}" for i, item in enumerate(items))]
