"""The ONNX export and its proof, run in a child process whose path starts with the toolchain
(:mod:`.toolchain`): transformers < 4.58, Optimum, ONNX Runtime. It reads the release's
transformers half from its staging folder (the export follows its writing; the proof follows
its proof against AudioCraft) and prints one JSON line.

    python -m audiocraft_ext.onnx_format.child export RELEASE OUT [--quantize]
    python -m audiocraft_ext.onnx_format.child prove RELEASE ONNX_DIR --frames N [--quantized]

Nothing here imports audiocraft: the child needs only the toolchain's transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..writing.release_format import ONNX_GRAPHS
from .ort_generate import OrtMusicgen

QUANTIZED = "_quantized"
TEXTS = ("warm lo-fi piano with soft drums", "dark techno with heavy bass")


def export(release: Path, out: Path, quantize: bool) -> dict[str, Any]:
    """Optimum's text-to-audio export, its two decoders merged into one with a KV-cache branch
    (Optimum leaves them apart for MusicGen), the three graphs Transformers.js loads moved to
    ``out``; with ``quantize``, their 8-bit versions beside them."""
    from optimum.exporters.onnx import main_export
    from optimum.onnx import merge_decoders

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        # its own check compares audio at 1e-5 and fails on EnCodec's float32 rounding
        # (2e-5 on peaks of 40); the proof below compares everything, relative to its scale
        main_export(model_name_or_path=str(release), output=str(work), task="text-to-audio",
                    device="cpu", do_validation=False)
        # strict=False: the cache branch does not output the cross-attention cache again
        merge_decoders(decoder=work / "decoder_model.onnx",
                       decoder_with_past=work / "decoder_with_past_model.onnx",
                       save_path=str(work / "decoder_model_merged.onnx"), strict=False)
        for name in ONNX_GRAPHS:
            for found in work.glob(f"{name}.onnx*"):  # .onnx_data: a graph over 2 GB
                shutil.move(str(found), out / found.name)
        if quantize:
            for name in ONNX_GRAPHS:
                _quantize(out / f"{name}.onnx", out / f"{name}{QUANTIZED}.onnx", work)
    return {"seconds": round(time.perf_counter() - started, 1),
            "files": {p.name: p.stat().st_size for p in sorted(out.iterdir())},
            "versions": _versions()}


def _quantize(source: Path, target: Path, scratch: Path) -> None:
    """8-bit weights as Transformers.js quantizes ("q8"): dynamic, per tensor, unsigned for a
    graph with convolutions (onnxruntime-web has no signed ConvInteger), inside the merged
    decoder's branches too."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if "encodec" in source.name:
        # EnCodec's weight norm is computed when it runs, so its convolutions have no constant
        # weights to quantize until ONNX Runtime folds it
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(scratch / source.name)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        source = scratch / source.name
    convolutions = any(node.op_type == "Conv" for node in onnx.load(
        str(source), load_external_data=False).graph.node)
    quantize_dynamic(str(source), str(target), per_channel=False, reduce_range=False,
                     weight_type=QuantType.QUInt8 if convolutions else QuantType.QInt8,
                     extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # optimum-onnx: optimum 1.x holds its exporter itself
            pass
    return found


def prove(release: Path, onnx_dir: Path, frames: int, quantized: bool) -> dict[str, Any]:
    """ONNX Runtime against transformers' PyTorch model loaded from the same release: the text
    encoder, the decoder's logits on the inputs of a greedy run (its first branch, then its
    cache branch), greedy codes over ``frames`` frames with the release's guidance, without,
    and for another text (which must change the codes of both), and EnCodec decoding."""
    import torch
    import transformers

    model = transformers.MusicgenForConditionalGeneration.from_pretrained(release).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(release)
    threads = torch.get_num_threads()  # as many for each, for the timing
    ours = OrtMusicgen(onnx_dir, release, threads=threads)
    scale = float(model.generation_config.guidance_scale or 1.0)
    steps = frames + ours.codebooks - 1  # the delay pattern's steps beyond the frames
    inputs = [tokenizer([text], return_tensors="pt") for text in TEXTS]
    runs = {"guided": (0, scale), "no_guidance": (0, 1.0), "other_text": (1, scale)}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seconds = {"onnxruntime": 0.0, "pytorch": 0.0}
    fed: list[np.ndarray] = []
    for run, (text, guidance) in runs.items():
        ids, mask = (inputs[text][k].numpy() for k in ("input_ids", "attention_mask"))
        started = time.perf_counter()
        onnx_codes = ours.generate(ids, mask, steps, guidance, fed if run == "guided" else None)
        ours.decode(onnx_codes)  # as transformers' generate decodes its codes
        seconds["onnxruntime"] += time.perf_counter() - started
        started = time.perf_counter()
        torch_codes = _torch_codes(model, inputs[text], steps, guidance)
        seconds["pytorch"] += time.perf_counter() - started
        codes[run] = (onnx_codes, torch_codes)
    with torch.no_grad():
        states = model.text_encoder(**inputs[0]).last_hidden_state.numpy()
        guided_codes = torch.from_numpy(codes["guided"][0])
        audio = model.audio_encoder.decode(guided_codes, [None]).audio_values.numpy()
    onnx_states = ours.encode_text(*(inputs[0][k].numpy() for k in ("input_ids",
                                                                     "attention_mask")))
    onnx_audio = ours.decode(codes["guided"][0])
    figures: dict[str, Any] = {
        "frames": frames, "guidance_scale": scale,
        "text_encoder_max_abs_diff": float(np.abs(states - onnx_states).max()),
        **_logits(model, ours, inputs[0], scale, fed),
        "decode_max_abs_diff": float(np.abs(audio - onnx_audio).max()),
        "decode_max_rel_diff": float(np.abs(audio - onnx_audio).max()
                                     / max(float(np.abs(audio).max()), 1e-30)),
        **{f"greedy_identical_frames{'' if run == 'guided' else '_' + run}":
           _identical(*pair) for run, pair in codes.items()},
        "greedy_first_difference": _first_difference(codes.values()),
        "other_text_changes_codes": bool(
            not np.array_equal(codes["guided"][0], codes["other_text"][0])
            and not np.array_equal(codes["guided"][1], codes["other_text"][1])),
        # greedy generation and decoding, both stacks on as many CPU threads
        "ms_per_frame": {stack: round(1000 * s / (len(runs) * frames), 2)
                         for stack, s in seconds.items()},
        "threads": threads,
    }
    if quantized:
        figures["quantized"] = _quantized(release, onnx_dir, inputs[0], steps, scale,
                                          codes["guided"][0], audio, threads)
    return figures


def _torch_codes(model: Any, inputs: Any, steps: int, guidance: float) -> np.ndarray:
    """The codes transformers' ``generate`` hands its audio decoder (it returns audio)."""
    import torch

    from ..transformers_format.equivalence import codes_captured

    with codes_captured(model) as captured, torch.no_grad():
        model.generate(**inputs, do_sample=False, guidance_scale=guidance, top_k=None,
                       max_new_tokens=steps)
    return captured[0].numpy()


def _identical(ours: np.ndarray, theirs: np.ndarray) -> int:
    """Frames whose codes (every codebook) are equal."""
    if ours.shape != theirs.shape:
        return 0
    return int((ours == theirs).all(axis=(0, 1, 2)).sum())


def _first_difference(runs: Any) -> int | None:
    """The first frame at which ONNX Runtime's and PyTorch's codes part in any run, or None."""
    found = None
    for ours, theirs in runs:
        if ours.shape != theirs.shape:
            return 0
        parted = np.flatnonzero((ours != theirs).reshape(-1, ours.shape[-1]).any(axis=0))
        if parted.size:
            found = int(parted[0]) if found is None else min(found, int(parted[0]))
    return found


def _logits(model: Any, ours: OrtMusicgen, inputs: Any, scale: float,
            fed: list[np.ndarray]) -> dict[str, float]:
    """The merged decoder's logits against PyTorch's, step by step on the inputs of the guided
    greedy run, each with its own cache: step 0 is the first branch, the others the cache's."""
    import torch

    states = ours.encode_text(*(inputs[k].numpy() for k in ("input_ids", "attention_mask")))
    mask = inputs["attention_mask"].numpy().astype(np.int64)
    if scale > 1:
        states = np.concatenate([states, np.zeros_like(states)])
        mask = np.concatenate([mask, np.zeros_like(mask)])
    cache = None  # then whatever this transformers returns (tuples before 4.47, Cache after)
    past = None
    diffs, scale_of = [], 0.0
    with torch.no_grad():
        for ids in fed:
            out = model(encoder_outputs=(torch.from_numpy(states),),
                        attention_mask=torch.from_numpy(mask),
                        decoder_input_ids=torch.from_numpy(ids), past_key_values=cache,
                        use_cache=True)
            cache = out.past_key_values
            logits, past = ours.decoder_step(ids, states, mask, past)
            theirs = out.logits[:, -1].float().numpy()
            diffs.append(float(np.abs(logits[:, -1] - theirs).max()))
            scale_of = max(scale_of, float(np.abs(theirs).max()))
    return {"logits_max_abs_diff_first_step": diffs[0],
            "logits_max_abs_diff": max(diffs),
            "logits_max_rel_diff": max(diffs) / max(scale_of, 1e-30)}


def _quantized(release: Path, onnx_dir: Path, inputs: Any, steps: int, scale: float,
               codes: np.ndarray, audio: np.ndarray, threads: int) -> dict[str, Any]:
    """The 8-bit graphs against the float ones' greedy ``codes`` and their ``audio``, reported
    (not bounded: 8-bit weights change what greedy decoding picks wherever two codes are
    close)."""
    quantized = OrtMusicgen(onnx_dir, release, suffix=QUANTIZED, threads=threads)
    ids, mask = (inputs[k].numpy() for k in ("input_ids", "attention_mask"))
    found = quantized.generate(ids, mask, steps, scale)
    return {"greedy_identical_frames": _identical(found, codes),
            "decode_max_abs_diff": float(np.abs(quantized.decode(codes) - audio).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export_ = commands.add_parser("export")
    export_.add_argument("release", type=Path)
    export_.add_argument("out", type=Path)
    export_.add_argument("--quantize", action="store_true")
    prove_ = commands.add_parser("prove")
    prove_.add_argument("release", type=Path)
    prove_.add_argument("onnx_dir", type=Path)
    prove_.add_argument("--frames", type=int, required=True)
    prove_.add_argument("--quantized", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "export":
        result = export(args.release, args.out, args.quantize)
    else:
        result = prove(args.release, args.onnx_dir, args.frames, args.quantized)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
