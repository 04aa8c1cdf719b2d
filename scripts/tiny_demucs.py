#!/usr/bin/env python3
"""Put a tiny but REAL `htdemucs` into a torch hub cache folder, for tests of MusicGen-melody.

AudioCraft's melody conditioner (`ChromaStemConditioner`) separates the melody prompt with
demucs' `htdemucs`, which `demucs.pretrained.get_model('htdemucs')` fetches through
`torch.hub.load_state_dict_from_url(.../955717e8-8726e21a.th, check_hash=True)`. torch.hub reads
`$TORCH_HOME/hub/checkpoints/955717e8-8726e21a.th` instead, without the download or the hash
check, when the file is there. This script writes that file: a randomly initialised `HTDemucs`
(the real class, shrunk: 8 channels, 1 transformer layer, about 1 MB) in demucs' own package
format (`demucs.states.serialize_model`). Nothing downloads. With

    TORCH_HOME=<printed folder>

training, `MusicGen.get_pretrained` and `generate_with_chroma` of a melody model run offline.

    python scripts/tiny_demucs.py [--out DIR] [--force]

The last stdout line is the TORCH_HOME folder, a cache keyed by this file's sha256 under
AUDIOCRAFT_EXT_CACHE (default ~/.cache/audiocraft-ext), like tiny_t5.py. Needs demucs (the
`melody` extra).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).resolve()
CHECKPOINT = "955717e8-8726e21a.th"  # demucs/remote/files.txt: htdemucs' one model
SEED = 1234
# htdemucs' own sources and rate, shrunk everywhere else so it builds and runs in seconds
KWARGS = {"sources": ["drums", "bass", "other", "vocals"], "audio_channels": 2,
          "samplerate": 44100, "segment": 7.8, "channels": 8, "t_layers": 1}


def log(msg: str) -> None:
    print(f"[tiny_demucs] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("AUDIOCRAFT_EXT_CACHE",
                               Path.home() / ".cache" / "audiocraft-ext")).expanduser()


def default_out() -> Path:
    return cache_root() / f"tiny-demucs-{hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]}"


def checkpoint_path(torch_home: Path) -> Path:
    return torch_home / "hub" / "checkpoints" / CHECKPOINT


def build(path: Path) -> None:
    """Write the random HTDemucs, as demucs packages its models, to ``path``."""
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    torch.manual_seed(SEED)
    model = HTDemucs(**KWARGS)
    pkg = serialize_model(model, OmegaConf.create({}), half=False)
    path.parent.mkdir(parents=True)
    torch.save(pkg, path)


def ensure(out: Path | None = None, force: bool = False) -> Path:
    """The TORCH_HOME folder holding the tiny htdemucs, built unless already there."""
    home = (out or default_out()).expanduser().resolve()
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if checkpoint_path(home).is_file() and not force:
            return home
        log(f"building a tiny htdemucs into {home}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
        try:
            build(checkpoint_path(tmp))
            if home.exists():
                shutil.rmtree(home)
            tmp.rename(home)  # readers never see a half-written folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="TORCH_HOME folder (default: $AUDIOCRAFT_EXT_CACHE/tiny-demucs-<key>)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    print(ensure(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
