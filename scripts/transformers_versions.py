#!/usr/bin/env python3
"""Other 🤗 transformers releases beside the venv's own, to load a release's folder with each.

    python scripts/transformers_versions.py install [VERSION ...]   # prints VERSION<TAB>folder
    PYTHONPATH=<folder> python scripts/transformers_versions.py probe RELEASE [--frames N]

`install` puts a transformers release, with the tokenizers and huggingface_hub releases it was
made for, into a cache folder (`pip install --no-deps --target`: nothing else of the venv
changes); a process of the venv started with `PYTHONPATH=<folder>` imports them instead of its
own. The folders are a cache under AUDIOCRAFT_EXT_CACHE (default ~/.cache/audiocraft-ext),
keyed by the pins below; installs come from the package index (PyPI).

`probe` does what a user of the folder does, with whichever transformers the process imports:
`from_pretrained`, `AutoProcessor`, the processor on a prompt and `generate` with the folder's
generation config; every warning transformers logs or raises on the way is recorded.
Then it runs the export's own proof (`prove_release`: logits, EnCodec, greedy codes against
AudioCraft's). The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from audiocraft_ext.onnx_format.toolchain import cache_root, pip_target

# Releases people run, from the oldest that reads a MusicGen folder as the Hub lays it out
# (4.44) to the last of 4.x: each with the tokenizers release it requires, the last
# huggingface_hub before 1.0 (which 4.x refuses) and the oldest torch it imports with (4.57
# fails on torch 2.1: torch.utils._pytree.register_pytree_node). The venv's own transformers
# (5.x in the modern stack, 4.44 in the pinned one) is the other end.
HUB = "huggingface_hub==0.36.2"
RELEASES: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "4.44.2": (("tokenizers==0.19.1", HUB), (2, 1)),
    "4.46.3": (("tokenizers==0.20.3", HUB), (2, 1)),
    "4.48.3": (("tokenizers==0.21.4", HUB), (2, 1)),
    "4.52.4": (("tokenizers==0.21.4", HUB), (2, 1)),
    "4.57.6": (("tokenizers==0.22.1", HUB), (2, 2)),
}
PROMPT = "warm lo-fi piano with soft drums"


def log(msg: str) -> None:
    print(f"[transformers_versions] {msg}", file=sys.stderr, flush=True)


def runs_here(version: str) -> bool:
    """Whether ``version`` imports with this process' torch and is not its own transformers."""
    from importlib.metadata import version as installed

    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= RELEASES[version][1] and installed("transformers") != version


def folder_of(version: str) -> Path:
    pins = "-".join(p.split("==")[1] for p in RELEASES[version][0])
    return cache_root() / f"transformers-{version}-{pins}"


def install(version: str) -> Path:
    """The folder holding transformers ``version`` and its pins, installed unless there."""
    return pip_target(folder_of(version), (f"transformers=={version}", *RELEASES[version][0]),
                      log=log)


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def probe(release: Path, frames: int, proof_frames: int | None) -> dict[str, Any]:
    """Load and generate as a user does (warnings recorded), then the export's proof."""
    import torch
    import transformers

    from audiocraft_ext.reporting.model_facts import cfg_of_yaml
    from audiocraft_ext.transformers_format.files import prove_release
    from audiocraft_ext.untrusted.safe_load import load_checkpoint

    config = json.loads((release / "config.json").read_text())
    model_class = getattr(transformers, config["architectures"][0])
    recorder = _Recorder()
    logging.getLogger("transformers").addHandler(recorder)
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        model = model_class.from_pretrained(release)
        processor = transformers.AutoProcessor.from_pretrained(release)
        inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
        torch.manual_seed(0)
        with torch.no_grad():  # the folder's generation config: sampling, its guidance
            audio = model.generate(**inputs, max_new_tokens=frames)
    logging.getLogger("transformers").removeHandler(recorder)
    said = recorder.messages + [f"{w.category.__name__}: {w.message}" for w in raised]
    lm_cfg = cfg_of_yaml(load_checkpoint(release / "state_dict.bin")["xp.cfg"], str(release))
    if lm_cfg is None:
        raise SystemExit(f"{release}/state_dict.bin holds no xp.cfg")
    return {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
            "warnings": said, "audio_shape": list(audio.shape),
            "audio_finite": bool(torch.isfinite(audio).all()),
            "proof": prove_release(release, lm_cfg, proof_frames)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install_ = commands.add_parser("install", help="install releases into the cache")
    install_.add_argument("versions", nargs="*", default=list(RELEASES))
    probe_ = commands.add_parser("probe", help="load and generate with this process' release")
    probe_.add_argument("release", type=Path)
    probe_.add_argument("--frames", type=int, default=20, help="frames the user's run generates")
    probe_.add_argument("--proof-frames", type=int, default=None,
                        help="frames of the proof (default: the generation length)")
    args = parser.parse_args(argv)
    if args.command == "install":
        for version in args.versions:
            print(f"{version}\t{install(version)}")
    else:
        print(json.dumps(probe(args.release, args.frames, args.proof_frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
