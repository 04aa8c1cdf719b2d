#!/usr/bin/env python3
"""Train REAL AudioCraft 1.3.0 experiments (Dora XPs) on CPU, tiny and fast, for tests.

Every checkpoint is written by audiocraft's own solvers through its real training entry point
(`dora -P audiocraft run ...`), run from an extracted audiocraft 1.3.0 sdist (the installed
wheel-less package has no `config/` tree). Data is synthetic and generated here; nothing
downloads model weights: the text conditioner is the LUT one with the `noop` tokenizer, or, for
the `*_t5` XPs, T5 `t5-small` served offline from the tiny T5 that scripts/tiny_t5.py builds
into a Hugging Face cache folder (the children get HF_HOME pointing at it).

    python scripts/train_fixtures.py [--out DIR] [--only NAME ...] [--force]

Run it with the python of a venv that holds audiocraft 1.3.0, its import deps and
`imageio-ffmpeg` (or have an `ffmpeg` on PATH). The result is DIR/fixtures.json:

    {"audiocraft": "1.3.0", "script_sha256": ..., "dora_dir": ...,
     "hf_home": <tiny T5 cache folder or null>, "torch_home": <tiny htdemucs or null>,
     "xps": {"encodec": {"sig", "checkpoint", "seconds", "solver", "overrides", ...}, ...}}

It is a cache: when DIR/fixtures.json was written by this very script file (same sha256) for
the same audiocraft version and holds every requested XP, nothing runs (unless --force). The
last stdout line is always the path of fixtures.json.

Environment knobs: AUDIOCRAFT_EXT_CACHE (default ~/.cache/audiocraft-ext) holds the sdist and
the default output folders; AUDIOCRAFT_SDIST may point at a local audiocraft-1.3.0.tar.gz.
"""
from __future__ import annotations

import argparse
import fcntl
import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NoReturn

AUDIOCRAFT_VERSION = "1.3.0"
SCRIPT = Path(__file__).resolve()
LOG_TAIL_LINES = 80

# Overrides shared by every XP: CPU, no worker processes, 2 epochs x 2 updates, tiny splits.
COMMON = [
    "device=cpu",
    "dataset.num_workers=0",
    "dataset.batch_size=2",
    "dataset.train.num_samples=4",
    "dataset.valid.num_samples=2",
    "dataset.evaluate.num_samples=2",
    "dataset.generate.num_samples=1",
    "optim.epochs=2",
    "optim.updates_per_epoch=2",
    "evaluate.num_workers=0",
    "generate.num_workers=0",
    "logging.log_tensorboard=false",
]
# Text conditioner that needs no download (T5 would hit the Hugging Face hub).
LUT = [
    "conditioners.description.model=lut",
    "+conditioners.description.lut={n_bins:64,dim:16,tokenizer:noop}",
]
# CPU autocast cannot do float16; bfloat16 works and gives a bfloat16 best_state.
BF16 = ["autocast=true", "autocast_dtype=bfloat16"]
# The generate stage always runs on the last epoch; by default MusicGen generates a whole
# dataset segment (30 s = 1500 steps, ~15 s on CPU). 4 s with a 1 s prompt is plenty.
SHORT_GEN = ["generate.lm.gen_duration=4", "generate.lm.prompt_duration=1"]
# compression/debug shrunk to the LM's card (400) and codebook count (4).
RVQ = ["rvq.n_q=4", "rvq.bins=400"]
# The layout transformers' Musicgen can represent: a power-of-two codebook (its EncodecModel
# refuses 400), the delay pattern (the debug configs use parallel) and T5 text (the debug
# configs' t5-small, served by the tiny T5). float32: no autocast.
RVQ512 = ["rvq.n_q=4", "rvq.bins=512"]
T5_DELAY = ["conditioners.description.model=t5", "conditioners.description.t5.name=t5-small",
            "transformer_lm.card=512", "codebooks_pattern.modeling=delay"]

# name -> (solver, dependencies, overrides). "{sig:NAME}" is replaced by NAME's signature.
XPS: dict[str, tuple[str, list[str], list[str]]] = {
    # 32 kHz EnCodec; ratios [8,5,4,4] = hop 640 = 50 frames/s, like facebook/encodec_32khz
    # (MAGNeT's compression_model_framerate is 50).
    "encodec": ("compression/debug", [], [
        "dset=audio/fixtures_music32", "sample_rate=32000", "seanet.ratios=[8,5,4,4]", *RVQ]),
    # 16 kHz EnCodec (compression/debug's own rate; hop 320 = 50 frames/s) for AudioGen.
    "encodec16": ("compression/debug", [], [
        "dset=audio/fixtures_sounds16", "sample_rate=16000", *RVQ]),
    "musicgen": ("musicgen/debug", ["encodec"], [
        "dset=audio/fixtures_music32", "compression_model_checkpoint=//sig/{sig:encodec}",
        *LUT, "dataset.segment_duration=30", *BF16, *SHORT_GEN, "checkpoint.save_every=1"]),
    "musicgen_ema": ("musicgen/debug", ["encodec"], [
        "dset=audio/fixtures_music32", "compression_model_checkpoint=//sig/{sig:encodec}",
        *LUT, "dataset.segment_duration=30", *BF16, *SHORT_GEN,
        "optim.ema.use=true", "optim.ema.updates=1"]),
    "audiogen": ("audiogen/debug", ["encodec16"], [
        "dset=audio/fixtures_sounds16", "compression_model_checkpoint=//sig/{sig:encodec16}",
        *LUT, "dataset.segment_duration=5", *BF16]),
    # The same two EnCodecs with 512 bins, and T5-conditioned, delay-pattern LMs on them.
    "encodec512": ("compression/debug", [], [
        "dset=audio/fixtures_music32", "sample_rate=32000", "seanet.ratios=[8,5,4,4]",
        *RVQ512]),
    "encodec16_512": ("compression/debug", [], [
        "dset=audio/fixtures_sounds16", "sample_rate=16000", *RVQ512]),
    "musicgen_t5": ("musicgen/debug", ["encodec512"], [
        "dset=audio/fixtures_music32", "compression_model_checkpoint=//sig/{sig:encodec512}",
        *T5_DELAY, "dataset.segment_duration=30", *SHORT_GEN]),
    "audiogen_t5": ("audiogen/debug", ["encodec16_512"], [
        "dset=audio/fixtures_sounds16", "compression_model_checkpoint=//sig/{sig:encodec16_512}",
        *T5_DELAY, "dataset.segment_duration=5"]),
    # Stereo: codebooks of the left and right channels interleaved (L0, R0, L1, R1...) over the
    # mono 16 kHz EnCodec. audiocraft's own sample stage crashes on stereo prompts
    # (BufferError: memoryview not C-contiguous): prompted samples off.
    "musicgen_stereo": ("musicgen/debug", ["encodec16_512"], [
        "dset=audio/fixtures_stereo16",
        "compression_model_checkpoint=//sig/{sig:encodec16_512}", "sample_rate=16000",
        "channels=2", "interleave_stereo_codebooks.use=true", "transformer_lm.n_q=8",
        *T5_DELAY, "codebooks_pattern.delay.delays=[0,0,1,1,2,2,3,3]",
        "dataset.segment_duration=30", "+dataset.generate.segment_duration=2",
        "generate.lm.prompted_samples=false", *SHORT_GEN]),
    # Melody: AudioCraft's chroma2music conditioning (ChromaStemConditioner on the segment's
    # own audio, prepended with the T5 text), demucs' htdemucs served by the tiny one of
    # scripts/tiny_demucs.py (TORCH_HOME).
    "musicgen_melody": ("musicgen/debug", ["encodec512"], [
        "dset=audio/fixtures_music32", "compression_model_checkpoint=//sig/{sig:encodec512}",
        "conditioner=chroma2music", "conditioners.description.t5.name=t5-small",
        "transformer_lm.card=512", "codebooks_pattern.modeling=delay",
        "dataset.segment_duration=30", *SHORT_GEN]),
    "magnet": ("magnet/magnet_32khz", ["encodec"], [
        "dset=audio/fixtures_music32", "compression_model_checkpoint=//sig/{sig:encodec}",
        *LUT, "model/lm/model_scale=xsmall", "transformer_lm.card=400",
        "transformer_lm.memory_efficient=false", "transformer_lm.custom=true",
        "dataset.segment_duration=12", *BF16, "deadlock.use=false", "optim.ema.device=cpu",
        "generate.lm.decoding_steps=[4,2,2,2]"]),
}
DEFAULT_SET = list(XPS)
# XPs whose training loads T5 (through transformers, by name, from HF_HOME), and demucs
MELODY = "conditioner=chroma2music"
T5_XPS = {name for name, (_s, _d, ovs) in XPS.items() if T5_DELAY[0] in ovs or MELODY in ovs}
DEMUCS_XPS = {name for name, (_s, _d, ovs) in XPS.items() if MELODY in ovs}

# Synthetic data sets: name -> (sample rate, dset yaml name, kind of sidecar, channels).
DATASETS = {
    "music32": (32000, "fixtures_music32", "music", 1),
    "sounds16": (16000, "fixtures_sounds16", "sound", 1),
    "stereo16": (16000, "fixtures_stereo16", "music", 2),
}
N_FILES = 4
FILE_SECONDS = 35.0


def log(msg: str) -> None:
    print(f"[train_fixtures] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> NoReturn:
    log("ERROR: " + msg)
    raise SystemExit(1)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("AUDIOCRAFT_EXT_CACHE",
                               Path.home() / ".cache" / "audiocraft-ext")).expanduser()


def tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


# ---------------------------------------------------------------- sdist and tools
def get_sdist() -> Path:
    """Path of audiocraft-1.3.0.tar.gz, downloaded once with pip into the cache."""
    local = os.environ.get("AUDIOCRAFT_SDIST")
    if local:
        if not Path(local).is_file():
            fail(f"AUDIOCRAFT_SDIST={local} is not a file")
        return Path(local)
    dest = cache_root() / "sdist"
    found = sorted(dest.glob(f"audiocraft-{AUDIOCRAFT_VERSION}.tar.gz"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading the audiocraft {AUDIOCRAFT_VERSION} sdist into {dest}")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
           "--no-binary", ":all:", f"audiocraft=={AUDIOCRAFT_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"audiocraft-{AUDIOCRAFT_VERSION}.tar.gz"))
    if proc.returncode != 0 or not found:
        fail("pip download of the audiocraft sdist failed:\n" + proc.stdout[-3000:]
             + proc.stderr[-3000:])
    return found[0]


def extract_sdist(tarball: Path, dest: Path) -> Path:
    """Extract the sdist into dest (fresh) and return its top folder (has config/)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if not (m.name.startswith("/") or ".." in Path(m.name).parts)]
        tar.extractall(dest, members=members)
    top = dest / f"audiocraft-{AUDIOCRAFT_VERSION}"
    if not (top / "config" / "config.yaml").is_file() or not (top / "audiocraft").is_dir():
        fail(f"{tarball} does not look like the audiocraft {AUDIOCRAFT_VERSION} sdist")
    return top


def ffmpeg_bin_dir(out: Path) -> Path:
    """A folder holding an `ffmpeg` (audio_write shells out to it, even for WAV)."""
    bindir = out / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    link = bindir / "ffmpeg"
    try:
        import imageio_ffmpeg
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        exe = shutil.which("ffmpeg")
    if not exe:
        fail("no ffmpeg: `pip install imageio-ffmpeg` into this venv or put ffmpeg on PATH")
    exe = os.path.realpath(exe)  # never link to our own link
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(exe)
    return bindir


def child_env(out: Path, src: Path, bindir: Path) -> dict:
    env = dict(os.environ)
    user = env.get("USER") or ""
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (containers)
            user = "fixtures"
    env.update({
        "USER": user,  # config/teams/default.yaml reads ${oc.env:USER}
        "AUDIOCRAFT_DORA_DIR": str(out / "dora"),
        "AUDIOCRAFT_TEAM": "default",
        "AUDIOCRAFT_CLUSTER": "default",
        "AUDIOCRAFT_REFERENCE_DIR": str(out / "reference"),
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        # the sdist's package (whose config/ sits next to it) must win over site-packages
        "PYTHONPATH": os.pathsep.join([str(src)] + [p for p in [env.get("PYTHONPATH")] if p]),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # torch >= 2.6 defaults torch.load to weights_only=True, and audiocraft's solver then
        # cannot load the //sig/ EnCodec checkpoint (pickled DictConfig). These are our own
        # files, just written; torch < 2.6 ignores the variable.
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    })
    env.pop("AUDIOCRAFT_CONFIG", None)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "_DORA_GIT_SAVE_DONE"):
        env.pop(var, None)
    return env


def tiny_t5_home() -> str:
    """The HF_HOME folder of the tiny T5 `t5-small` (built by scripts/tiny_t5.py, cached)."""
    cmd = [sys.executable, str(SCRIPT.parent / "tiny_t5.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail("building the tiny T5 failed:\n" + proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def tiny_demucs_home() -> str:
    """The TORCH_HOME folder of the tiny htdemucs (built by scripts/tiny_demucs.py, cached)."""
    cmd = [sys.executable, str(SCRIPT.parent / "tiny_demucs.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail("building the tiny htdemucs failed:\n" + proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- data
def make_dataset(name: str, out: Path, src: Path, env: dict, logdir: Path) -> None:
    import numpy as np
    import soundfile as sf

    sr, dset_name, kind, channels = DATASETS[name]
    audio_dir = out / "data" / name
    egs_dir = out / "egs" / name
    for d in (audio_dir, egs_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    rng = np.random.default_rng(1234 + sr)
    t = np.arange(int(FILE_SECONDS * sr)) / sr
    genres = ["ambient", "drone", "electronic", "noise"]
    keys = ["C", "D", "E", "F#"]
    for i in range(N_FILES):
        f0 = 110.0 * (i + 2)
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(2 * np.pi * 1.5 * f0 * t)
        wav *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * (i + 1) * t)  # slow tremolo
        wav += 0.02 * rng.standard_normal(t.shape)
        if channels == 2:  # the right channel a fifth above, so the two differ
            right = 0.3 * np.sin(2 * np.pi * 1.5 * f0 * t) + 0.02 * rng.standard_normal(t.shape)
            wav = np.stack([wav, right], axis=1)
        stem = f"{kind}_{i:02d}"
        sf.write(audio_dir / f"{stem}.wav", wav.astype(np.float32), sr, subtype="PCM_16")
        if kind == "music":
            meta = {
                "title": f"Synthetic tone {i}", "artist": f"artist_{i % 2}",
                "key": keys[i], "bpm": 60.0 + 20 * i, "genre": genres[i],
                "moods": ["calm"], "keywords": ["sine", "tone"],
                "description": f"a {genres[i]} sine tone at {f0:.0f} Hz",
                "name": stem, "instrument": "synth",
            }
        else:
            meta = {"description": f"a humming machine at {f0:.0f} Hz with faint noise"}
        (audio_dir / f"{stem}.json").write_text(json.dumps(meta))
    manifest = egs_dir / "data.jsonl.gz"
    cmd = [sys.executable, "-m", "audiocraft.data.audio_dataset", str(audio_dir), str(manifest),
           "--resolve", "--workers", "1"]
    logf = logdir / f"manifest_{name}.log"
    with open(logf, "w") as fh:
        rc = subprocess.run(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not manifest.is_file():
        fail(f"manifest for {name} failed (rc={rc}), log {logf}:\n{tail(logf)}")
    yaml = (
        "# @package __global__\n"
        "# written by audiocraft-ext scripts/train_fixtures.py\n"
        "datasource:\n"
        f"  max_sample_rate: {sr}\n"
        f"  max_channels: {channels}\n"
        + "".join(f"  {split}: {json.dumps(str(egs_dir))}\n"
                  for split in ("train", "valid", "evaluate", "generate"))
    )
    (src / "config" / "dset" / "audio" / f"{dset_name}.yaml").write_text(yaml)


# ---------------------------------------------------------------- training
def find_xp(dora_dir: Path, argv: list[str], started: float) -> Path | None:
    """The XP folder whose .argv.json is exactly argv (else the newest one made since start)."""
    xps = dora_dir / "xps"
    if not xps.is_dir():
        return None
    exact, recent = [], []
    for folder in xps.iterdir():
        argv_file = folder / ".argv.json"
        if not argv_file.is_file():
            continue
        try:
            if json.loads(argv_file.read_text()) == argv:
                exact.append(folder)
        except (OSError, ValueError):
            pass
        if folder.stat().st_mtime >= started - 1:
            recent.append(folder)
    pick = exact or recent
    return max(pick, key=lambda p: p.stat().st_mtime) if pick else None


def train(name: str, out: Path, src: Path, env: dict, logdir: Path, sigs: dict) -> dict:
    solver, _deps, overrides = XPS[name]
    argv = [f"solver={solver}", *COMMON]
    for ov in overrides:
        for dep, sig in sigs.items():
            ov = ov.replace(f"{{sig:{dep}}}", sig)
        if "{sig:" in ov:
            fail(f"{name}: unresolved dependency in override {ov!r}")
        argv.append(ov)
    cmd = [sys.executable, "-m", "dora", "-P", "audiocraft", "run", "--clear", *argv]
    logf = logdir / f"{name}.log"
    log(f"training {name}: {' '.join(argv)}")
    started = time.time()
    with open(logf, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = round(time.time() - started, 2)
    dora_dir = Path(env["AUDIOCRAFT_DORA_DIR"])
    folder = find_xp(dora_dir, argv, started)
    if folder is not None and (folder / "solver.log.0").is_file():
        shutil.copy(folder / "solver.log.0", logdir / f"{name}.solver.log")
    ckpt = folder / "checkpoint.th" if folder is not None else None
    if rc != 0 or folder is None or ckpt is None or not ckpt.is_file():
        fail(f"training {name} failed (rc={rc}, xp folder {folder}); log {logf}:\n{tail(logf)}")
    epochs = sorted((p.name for p in folder.glob("checkpoint_*.th")),
                    key=lambda s: int(s[len("checkpoint_"):-len(".th")]))
    log(f"trained {name}: sig {folder.name} in {seconds:.1f} s")
    return {
        "sig": folder.name,
        "checkpoint": str(ckpt),
        "epoch_checkpoints": [str(folder / e) for e in epochs],
        "folder": str(folder),
        "seconds": seconds,
        "solver": solver,
        "overrides": argv,
        "log": str(logf),
    }


def closure(names: list[str]) -> list[str]:
    """names plus their dependencies, dependencies first, in XPS order."""
    need: set[str] = set()

    def add(n: str) -> None:
        if n not in need:
            need.add(n)
            for d in XPS[n][1]:
                add(d)

    for n in names:
        add(n)
    return [n for n in XPS if n in need]


def default_out(script_sha: str) -> Path:
    return cache_root() / f"fixtures-{AUDIOCRAFT_VERSION}-{script_sha[:12]}"


def load_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $AUDIOCRAFT_EXT_CACHE/fixtures-<key>)")
    parser.add_argument("--only", nargs="+", choices=list(XPS), default=None, metavar="NAME",
                        help=f"XPs to build (dependencies are added): {', '.join(XPS)}")
    parser.add_argument("--force", action="store_true", help="retrain even when cached")
    args = parser.parse_args(argv)

    script_sha = sha256_file(SCRIPT)
    out = (args.out or default_out(script_sha)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    # One builder at a time per folder (pytest-xdist workers, parallel sessions): the others
    # wait here, then find the cache filled.
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(args, out, script_sha)


def build(args: argparse.Namespace, out: Path, script_sha: str) -> int:
    manifest_path = out / "fixtures.json"
    wanted = closure(args.only or DEFAULT_SET)

    previous = None if args.force else load_manifest(manifest_path)
    if previous is not None and (previous.get("audiocraft") != AUDIOCRAFT_VERSION
                                 or previous.get("script_sha256") != script_sha):
        previous = None
    if previous is not None:
        have = {n: x for n, x in previous.get("xps", {}).items()
                if Path(x.get("checkpoint", "")).is_file()}
        if all(n in have for n in wanted):
            log(f"cached: {manifest_path} (audiocraft {AUDIOCRAFT_VERSION}, "
                f"script {script_sha[:12]}); use --force to retrain")
            print(manifest_path)
            return 0
    else:
        have = {}

    from importlib.metadata import PackageNotFoundError, version
    try:
        installed = version("audiocraft")
    except PackageNotFoundError:
        installed = None
    if installed != AUDIOCRAFT_VERSION:
        fail(f"this python ({sys.executable}) has audiocraft {installed}, "
             f"need {AUDIOCRAFT_VERSION} (and its import deps)")

    t0 = time.time()
    if not have and out.exists():
        # stale or forced: start from scratch (only what this script made)
        for sub in ("dora", "data", "egs", "src", "logs", "bin", "reference", "fixtures.json"):
            p = out / sub
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    logdir = out / "logs"
    logdir.mkdir(exist_ok=True)
    (out / "reference").mkdir(exist_ok=True)

    src = extract_sdist(get_sdist(), out / "src")
    bindir = ffmpeg_bin_dir(out)
    env = child_env(out, src, bindir)
    hf_home = previous.get("hf_home") if previous else None
    if T5_XPS & set(wanted):
        hf_home = tiny_t5_home()
        env["HF_HOME"] = hf_home
    torch_home = previous.get("torch_home") if previous else None
    if DEMUCS_XPS & set(wanted):
        torch_home = tiny_demucs_home()
        env["TORCH_HOME"] = torch_home

    todo = [n for n in wanted if n not in have]
    by_yaml = {dset_name: ds for ds, (_sr, dset_name, _kind, _ch) in DATASETS.items()}
    datasets = {by_yaml[ov.split("/", 1)[1]] for n in wanted for ov in XPS[n][2]
                if ov.startswith("dset=audio/") and ov.split("/", 1)[1] in by_yaml}
    for ds in sorted(datasets):
        log(f"making synthetic data set {ds}")
        make_dataset(ds, out, src, env, logdir)

    xps = dict(have)
    for name in todo:
        sigs = {n: x["sig"] for n, x in xps.items()}
        xps[name] = train(name, out, src, env, logdir, sigs)

    import torch
    result = {
        "audiocraft": AUDIOCRAFT_VERSION,
        "script_sha256": script_sha,
        "python": sys.executable,
        "torch": torch.__version__,
        "dora_dir": env["AUDIOCRAFT_DORA_DIR"],
        "hf_home": hf_home,
        "torch_home": torch_home,
        "sdist_dir": str(src),
        "total_seconds": round(time.time() - t0, 2),
        "xps": {n: xps[n] for n in XPS if n in xps},
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(manifest_path)
    log(f"done in {result['total_seconds']:.1f} s: " + ", ".join(
        f"{n}={x['sig']}" for n, x in result["xps"].items()))
    print(manifest_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
