"""Benchmark: our export against audiocraft's export_lm, a plain file copy and the validation floor.

Builds a MusicGen-shaped training checkpoint in the solver's key layout (fp32 model, AdamW with
both moments, EMA, float16 best state, empty fsdp_best_state, history, Hydra-composed xp.cfg),
streamed to disk one tensor at a time, then runs each variant in a fresh process, alternating
the order between rounds, and reports the median wall time and whole-process peak RSS of each:

  a  audiocraft.utils.export.export_lm (made to load the file on this torch), under an
     address-space cap: where it needs more, it is reported as failed, not run again
  b  export_app.py validate=none
  c  export_app.py validate=load
  f  export_app.py validate=full validate.duration=1 (with the EnCodec the LM names), its
     generation time reported separately
  g  b with output.dtype=bfloat16 (the cast path)
  d  the floor for any torch-based exporter: import torch + shutil.copyfile of a file as large
     as the exported state
  e  cp of that file
  v  the floor for any validation that holds the float32 model: import audiocraft.models, map
     the exported state_dict.bin, keep a float32 copy of every tensor

    python bench/bench_export.py --preset quick --repeats 1   # ~0.6 GB checkpoint, 2 minutes
    python bench/bench_export.py --preset default             # ~4 GB (218M parameters)
    python bench/bench_export.py --preset large               # ~33 GB; ~42 GB free disk
    python bench/bench_export.py --series                     # 0.6 / 4 / 12 / 33 GB: fit
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GB = 10**9  # file sizes in decimal GB, as the presets are named
MiB = 2**20
GiB = 2**30

# (transformer dim, layers, heads): parameters ~ 16 * dim^2 * layers + 8 * 2048 * dim
PRESETS = {
    "tiny": (256, 4, 4),  # ~0.15 GB: lets the tests run a two-size series
    "quick": (512, 6, 8),  # ~0.6 GB, 34M parameters
    "default": (1024, 12, 16),  # ~4 GB, 218M (MusicGen-small-like)
    "medium": (1280, 24, 20),  # ~12 GB, 650M
    "large": (1536, 48, 24),  # ~33 GB, 1.84B (MusicGen-medium-shaped)
}
SERIES = ("quick", "default", "medium", "large")
VARIANTS = {
    "a": "export_lm",
    "b": "ours validate=none",
    "c": "ours validate=load",
    "f": "ours validate=full validate.duration=1",
    "g": "ours validate=none output.dtype=bfloat16",
    "d": "import torch + copyfile",
    "e": "cp",
    "v": "validation floor: audiocraft.models + mmap + float32 copies",
}
RELEASES = "bcfg"  # the variants that write a release folder with an export.json
SERIES_VARIANTS = "bgde"
CARD = 2048  # MusicGen's codebook size; the EnCodec built for f has as many bins
# fp32 model, exp_avg, exp_avg_sq, EMA (4 bytes each) and the float16 best state
BYTES_PER_PARAMETER = 4 * 4 + 2
DOUBLED_EXTRA_PER_PARAMETER = 3 * 4  # a second set of both moments and of the EMA
DISK_MARGIN = GiB  # logs, Hydra run dirs, the EnCodec XP, and not filling the disk to the brim

_MEASURE = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
            "wall = time.perf_counter() - t\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
            "sys.stderr.write(r.stderr.decode(errors='replace')[-4000:] if r.returncode else '')\n"
            "print(wall, peak, r.returncode)\n")
# The cap is set in the child itself so that only export_lm runs under it: uncapped, a
# checkpoint larger than RAM takes the whole machine down instead of failing.
_EXPORT_LM = ("import functools, resource, sys\n"
              "cap = int(sys.argv[3])\n"
              "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
              "import torch\n"
              "torch.load = functools.partial(torch.load, weights_only=False)  # torch >= 2.6\n"
              "from audiocraft.utils.export import export_lm\n"
              "export_lm(sys.argv[1], sys.argv[2])\n")
_COPY = "import shutil, sys, torch\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"
_FLOOR = ("import sys, torch\n"
          "import audiocraft.models\n"
          "pkg = torch.load(sys.argv[1], map_location='cpu', mmap=True, weights_only=True)\n"
          "kept = {k: v.to(torch.float32, copy=True) for k, v in pkg['best_state'].items()}\n")
# How going beyond RLIMIT_AS shows in export_lm's traceback (torch's own import included)
_OUT_OF_MEMORY = ("MemoryError", "can't allocate memory", "Cannot allocate memory",
                  "std::bad_alloc", "failed to map segment")


# --- the checkpoint --------------------------------------------------------------------------
def lm_config(preset: str, compression_sig: str) -> Any:
    """The Hydra-composed xp.cfg of the preset's LM, trained against ``//sig/<sig>``."""
    from audiocraft_ext.app.demo import compose_xp_config

    dim, layers, heads = PRESETS[preset]
    return compose_xp_config("musicgen", [
        f"compression_model_checkpoint=//sig/{compression_sig}",
        f"transformer_lm.dim={dim}", f"transformer_lm.num_layers={layers}",
        f"transformer_lm.num_heads={heads}", f"transformer_lm.card={CARD}"])


def lm_shapes(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The LM's state dict and parameters as meta tensors: shapes without the bytes."""
    import torch
    from audiocraft.models import builders

    meta_cfg = copy.deepcopy(cfg)
    meta_cfg.device = "meta"  # get_lm_model ends with .to(cfg.device)
    with torch.device("meta"):
        model = builders.get_lm_model(meta_cfg)
    return model.state_dict(), dict(model.named_parameters())


def parameter_count(preset: str) -> int:
    """The preset LM's parameters, from its meta model (nothing allocated)."""
    _, params = lm_shapes(lm_config(preset, "0"))
    return sum(p.numel() for p in params.values())


def _random_tensor_class() -> type:
    import torch

    from audiocraft_ext.untrusted.lazy_tensors import ComputedTensor

    @dataclass(eq=False)
    class RandomTensor(ComputedTensor):
        """Random values of the source's shape, made when the writer asks for them: seeded by
        ``name`` so that every build writes the same tensors."""

        name: str = ""
        low: float = -0.05
        high: float = 0.05

        def load(self) -> torch.Tensor:
            seed = int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:7], "little")
            out = torch.empty(tuple(self.shape), dtype=self.dtype)
            if not self.dtype.is_floating_point:
                return out.zero_()
            return out.uniform_(self.low, self.high, generator=torch.Generator().manual_seed(seed))

    return RandomTensor


def checkpoint_package(cfg: Any, double: bool = False) -> tuple[dict, int]:
    """The solver checkpoint's object graph, every tensor a lazy random one with its own
    storage; and its parameter count."""
    import torch

    from audiocraft_ext.app.demo import xp_signature

    random_tensor = _random_tensor_class()
    state, params = lm_shapes(cfg)

    def lazy(name: str, like: Any, dtype: Any = None, bounds: tuple = (-0.05, 0.05)) -> Any:
        return random_tensor([like], dtype or like.dtype, name, *bounds)

    half = {k: torch.float16 if t.is_floating_point() else t.dtype for k, t in state.items()}
    copies = 2 if double else 1
    moments = list(params.values()) * copies
    optimizer = {
        "state": {i: {"step": torch.tensor(1000.0),
                      "exp_avg": lazy(f"exp_avg/{i}", p, bounds=(-1e-3, 1e-3)),
                      "exp_avg_sq": lazy(f"exp_avg_sq/{i}", p, bounds=(0.0, 1e-6))}
                  for i, p in enumerate(moments)},
        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                          "amsgrad": False, "params": list(range(len(moments)))}],
    }
    ema = {k: lazy(f"ema/{k}", t) for k, t in state.items()}
    if double:
        ema.update({f"shadow.{k}": lazy(f"ema/shadow.{k}", t) for k, t in state.items()})
    pkg = {
        "history": [{"train": {"ce": 5.0 - e / 10}, "valid": {"ce": 5.1 - e / 10}}
                    for e in range(20)],
        "xp.cfg": cfg,
        "xp.sig": xp_signature(cfg),
        "best_state": {"model": {k: lazy(f"best/{k}", t, half[k]) for k, t in state.items()}},
        "fsdp_best_state": {},
        "model": {k: lazy(f"model/{k}", t) for k, t in state.items()},
        "optimizer": optimizer,
        "lr_scheduler": None,
        "ema": {"state": {"model": ema}, "count": 1000.0},
    }
    return pkg, sum(p.numel() for p in params.values())


def write_checkpoint(pkg: dict, path: Path, progress: Callable[[int], None]) -> None:
    """Write ``pkg`` as a torch.save file, one tensor in memory at a time."""
    from audiocraft_ext.writing.torch_writer import save_streaming

    save_streaming(pkg, path, progress)  # its return value is changing: not relied on


def _progress_printer(total: int, what: str) -> Callable[[int], None]:
    done, shown = 0, 0

    def advance(nbytes: int) -> None:
        nonlocal done, shown
        done += nbytes
        if total >= 4 * GB and done * 10 // total > shown:  # small builds are over in seconds
            shown = done * 10 // total
            print(f"  {what}: {done / GB:.1f} of ~{total / GB:.1f} GB", file=sys.stderr)

    return advance


def build_checkpoint(path: Path, preset: str, compression_sig: str,
                     double: bool = False) -> dict:
    """Write the preset's MusicGen-shaped solver checkpoint; return its facts."""
    start = time.perf_counter()
    pkg, n_params = checkpoint_package(lm_config(preset, compression_sig), double)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(pkg, path, _progress_printer(checkpoint_estimate(n_params, double),
                                                  f"writing {path.name}"))
    size, seconds = path.stat().st_size, time.perf_counter() - start
    print(f"built {size / GB:.2f} GB checkpoint ({n_params / 1e6:.0f}M parameters) in "
          f"{seconds:.0f} s", file=sys.stderr)
    return {"path": str(path), "bytes": size, "parameters": n_params,
            "best_state_bytes": n_params * 2, "float32_model_bytes": n_params * 4,
            "optimizer_ema_doubled": double, "build_s": seconds}


def build_compression_xp(dora_dir: Path) -> str:
    """Write a tiny EnCodec XP with the LM's codebook size (what f ships and generates
    with, offline); return its signature."""
    import warnings

    from audiocraft_ext.app.demo import write_encodec_xp

    # emitted by EnCodec's every build; says nothing about the benchmark
    warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated")
    return write_encodec_xp(dora_dir, [f"rvq.bins={CARD}"]).parent.name


# --- disk ------------------------------------------------------------------------------------
def checkpoint_estimate(parameters: int, double: bool = False) -> int:
    """Bytes of the built checkpoint, within a few MB."""
    per = BYTES_PER_PARAMETER + (DOUBLED_EXTRA_PER_PARAMETER if double else 0)
    return parameters * per + 16 * MiB


def disk_needed(parameters: int) -> int:
    """Free disk a preset's run needs at its peak: the checkpoint, the state-sized file d and e
    copy, and one variant's output at a time (all variants write the state's size)."""
    return checkpoint_estimate(parameters) + 2 * (parameters * 2) + DISK_MARGIN


def doubled_disk_needed(parameters: int) -> int:
    """Free disk of the doubled run, once the first checkpoint and the state file are gone."""
    return checkpoint_estimate(parameters, double=True) + parameters * 2 + DISK_MARGIN


def disk_shortfall(work: Path, needed: int, what: str) -> str | None:
    """Why ``work`` cannot hold ``needed`` bytes for ``what``, or None when it can."""
    free = shutil.disk_usage(work).free
    if free >= needed:
        return None
    return (f"{what} needs {needed / GB:.1f} GB of free disk in {work}, which has "
            f"{free / GB:.1f} GB free")


# --- running the variants --------------------------------------------------------------------
@dataclass
class Run:
    """One measured process."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stderr: str = ""


@dataclass
class VariantRuns:
    """The measured runs of one variant, and what its releases reported."""

    key: str
    runs: list[Run] = field(default_factory=list)
    failed: str | None = None  # why it failed, once it did (then it is not run again)
    failed_round: int | None = None
    manifest: dict | None = None  # timings and checks of the last release's export.json
    # f: the `generate` check's seconds, one per run (None where the manifest had none)
    generate_s: list[float | None] = field(default_factory=list)
    exported_bytes: int | None = None

    def summary(self) -> dict:
        walls = [r.wall_s for r in self.runs]
        peaks = [r.peak_rss_bytes for r in self.runs]
        out: dict[str, Any] = {
            "name": VARIANTS[self.key], "wall_s": walls, "peak_rss_bytes": peaks,
            "median_wall_s": statistics.median(walls) if walls else None,
            "median_peak_rss_bytes": statistics.median(peaks) if peaks else None}
        if self.failed is not None:
            out.update(failed=self.failed, failed_round=self.failed_round)
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if self.key == "f":
            generate = [g for g in self.generate_s if g is not None]
            rest = [r.wall_s - g for r, g in zip(self.runs, self.generate_s, strict=True)
                    if g is not None]
            out["generate_s"] = self.generate_s
            out["median_generate_s"] = statistics.median(generate) if generate else None
            out["median_wall_minus_generate_s"] = statistics.median(rest) if rest else None
        if self.exported_bytes is not None:
            out["exported_bytes"] = self.exported_bytes
        return out


def _measure(cmd: list[str], env: dict) -> Run:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"the measuring process failed: {' '.join(cmd)}\n{out.stderr}")
    wall, peak, rc = out.stdout.split()
    return Run(float(wall), int(peak), int(rc), out.stderr)


class Workspace:
    """The files of one preset's run: checkpoint, state-sized file, one output at a time."""

    def __init__(self, work: Path, ckpt: Path, env: dict, a_cap: int,
                 compression_sig: str) -> None:
        self.work, self.ckpt, self.env, self.a_cap = work, ckpt, env, a_cap
        self.compression_sig = compression_sig  # the EnCodec XP that the LM's xp.cfg names
        self.state_file = work / "state-sized.bin"
        self.b_sha256: list[str] = []
        self.a_b_identical: bool | None = None

    def out(self, variant: str) -> Path:
        return self.work / f"out-{variant}"

    def command(self, variant: str) -> list[str]:
        out = self.out(variant)
        app = [sys.executable, str(ROOT / "export_app.py"), "input=checkpoint",
               f"input.path={self.ckpt}", f"output.dir={out}",
               f"hydra.run.dir={self.work / 'hydra' / variant}"]
        return {
            "a": [sys.executable, "-c", _EXPORT_LM, str(self.ckpt), str(out / "state_dict.bin"),
                  str(self.a_cap)],
            "b": [*app, "compression=none", "validate=none"],
            "c": [*app, "compression=none", "validate=load"],
            # compression=auto: the EnCodec XP that xp.cfg names, so get_pretrained can run
            "f": [*app, "compression=auto", "validate=full", "validate.duration=1"],
            "g": [*app, "compression=none", "validate=none", "output.dtype=bfloat16"],
            "d": [sys.executable, "-c", _COPY, str(self.state_file), str(out / "copy.bin")],
            "e": ["cp", str(self.state_file), str(out / "copy.bin")],
            "v": [sys.executable, "-c", _FLOOR, str(self.state_file)],
        }[variant]

    def clean(self, variant: str) -> None:
        shutil.rmtree(self.out(variant), ignore_errors=True)
        for leftover in self.work.glob(f".out-{variant}*"):  # the app's lock and staging
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
        if variant in "de":
            self.out(variant).mkdir()

    def warm_up(self) -> None:
        """Run b once: its state_dict.bin becomes the file d, e and v read (and the first of
        b's outputs compared byte for byte), and the best state's records are in the page
        cache for every variant, as they are for d's file."""
        self.clean("b")
        run = _measure(self.command("b"), self.env)
        if run.returncode:
            raise SystemExit(f"b (our export) failed on the benchmark checkpoint:\n{run.stderr}")
        self.b_sha256.append(sha256(self.out("b") / "state_dict.bin"))
        os.replace(self.out("b") / "state_dict.bin", self.state_file)
        self.clean("b")

    def rewarm(self) -> None:
        """After a, when the checkpoint is too large to stay in the page cache: a's read of it
        evicted what the other variants read, which would count against whichever runs next."""
        if self.ckpt.stat().st_size < _ram_bytes() // 2:
            return
        self.clean("b")
        _measure(self.command("b"), self.env)  # reads the best state's records
        self.clean("b")
        sha256(self.state_file)  # reads the file d, e and v read

    def why_failed(self, variant: str, run: Run) -> str:
        lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {run.returncode}"
        if variant == "a" and run.returncode < 0:
            return (f"killed by signal {-run.returncode} at a peak RSS of "
                    f"{run.peak_rss_bytes / GiB:.1f} GiB: needs more memory than this machine "
                    "has free")
        if variant == "a" and any(s in run.stderr for s in _OUT_OF_MEMORY):
            return (f"needs more than {self.a_cap / GiB:.1f} GiB (its address-space cap, "
                    "--a-cap-gb)")
        return last[-300:]

    def after(self, variant: str, record: VariantRuns) -> None:
        """Read what a successful run left, then remove it: one output on disk at a time."""
        out = self.out(variant)
        if variant in RELEASES:
            manifest = json.loads((out / "export.json").read_text())
            validation = manifest.get("validation") or {}
            record.manifest = {"timings": manifest.get("timings", {}),
                               "checks": validation.get("checks", []),
                               "skipped": validation.get("skipped", [])}
            record.exported_bytes = (out / "state_dict.bin").stat().st_size
            if variant == "f":
                found = [c.get("seconds") for c in record.manifest["checks"]
                         if c.get("check") == "generate"]
                record.generate_s.append(float(found[0]) if found and isinstance(
                    found[0], (int, float)) else None)
        if variant == "b":
            self.b_sha256.append(sha256(out / "state_dict.bin"))
        if variant == "a" and self.a_b_identical is None:
            self.a_b_identical = tensors_identical(out / "state_dict.bin", self.state_file)
        self.clean(variant)


def run_rounds(ws: Workspace, variants: str, repeats: int) -> dict[str, VariantRuns]:
    """Run ``variants`` ``repeats`` times, alternating the order; a failed one is not rerun."""
    results = {v: VariantRuns(v) for v in variants}
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate: no variant always first
        for v in order:
            record = results[v]
            if record.failed is not None:
                continue
            ws.clean(v)
            run = _measure(ws.command(v), ws.env)
            if v == "a":
                ws.rewarm()
            if run.returncode:
                record.failed, record.failed_round = ws.why_failed(v, run), r + 1
                ws.clean(v)
                print(f"  round {r + 1}/{repeats} {v} ({VARIANTS[v]}): FAILED after "
                      f"{run.wall_s:.1f} s: {record.failed}; not run again", file=sys.stderr)
                continue
            record.runs.append(run)
            ws.after(v, record)
            print(f"  round {r + 1}/{repeats} {v} ({VARIANTS[v]}): {run.wall_s:.2f} s, "
                  f"{run.peak_rss_bytes / MiB:.0f} MiB", file=sys.stderr)
    return results


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_identical(a: Path, b: Path) -> bool:
    """Whether two release files hold the same config and bit-identical tensors."""
    import torch

    # torch 2.1 maps str paths only
    x = torch.load(str(a), map_location="cpu", mmap=True, weights_only=True)
    y = torch.load(str(b), map_location="cpu", mmap=True, weights_only=True)
    xs, ys = x["best_state"], y["best_state"]
    return (x["xp.cfg"] == y["xp.cfg"] and xs.keys() == ys.keys()
            and all(xs[k].dtype == ys[k].dtype and torch.equal(xs[k], ys[k]) for k in xs))


def clean_workdir(work: Path) -> None:
    """Remove what an earlier run left in ``work`` (it would count against the free disk)."""
    for name in ("dora", "hydra", "state-sized.bin"):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for leftover in [*work.glob("out-*"), *work.glob(".out-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink()


def measure_preset(preset: str, variants: str, repeats: int, work: Path, env: dict,
                   a_cap: int) -> tuple[dict, Workspace]:
    """Build the preset's checkpoint (after checking the disk) and measure ``variants`` on it."""
    parameters = parameter_count(preset)
    needed = disk_needed(parameters)
    short = disk_shortfall(work, needed, f"preset {preset} (a ~"
                           f"{checkpoint_estimate(parameters) / GB:.1f} GB checkpoint)")
    if short:
        raise SystemExit(f"{short}: free some, or pass --workdir on a larger disk")
    free = shutil.disk_usage(work).free
    print(f"preset {preset}: needs ~{needed / GB:.1f} GB of free disk, {free / GB:.1f} GB free",
          file=sys.stderr)
    dora = work / "dora"
    compression_sig = build_compression_xp(dora)
    ckpt = dora / "xps" / "bench" / "checkpoint.th"
    facts = build_checkpoint(ckpt, preset, compression_sig)
    ws = Workspace(work, ckpt, env, a_cap, compression_sig)
    ws.warm_up()
    runs = run_rounds(ws, variants, repeats)
    ram = _ram_bytes()
    report = {
        "preset": preset, "repeats": repeats, "checkpoint": facts,
        "exported_bytes": ws.state_file.stat().st_size,
        "disk": {"needed_bytes": needed, "free_bytes": free},
        "page_cache": ("warm: every file was just written or read"
                       if facts["bytes"] < ram // 2 else
                       f"the checkpoint is larger than half the RAM ({ram / GiB:.0f} GiB): a "
                       "reads it from disk; the best state's records that b, c, f and g read "
                       "and the file d, e and v read are warm (an unmeasured run of b precedes "
                       "the rounds and follows each run of a)"),
        "variants": {v: r.summary() for v, r in runs.items()},
        "b_sha256": ws.b_sha256,
        "b_byte_identical": len(set(ws.b_sha256)) == 1 if len(ws.b_sha256) > 1 else None,
        "a_b_tensor_identical": ws.a_b_identical,
    }
    report["ratios"], report["not_computed"] = ratios(report)
    return report, ws


def _ram_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "ram_bytes": _ram_bytes(), "python": platform.python_version(),
            "torch": torch.__version__}


# --- the two modes ---------------------------------------------------------------------------
def bench(preset: str, repeats: int, work: Path, env: dict, double: bool, variants: str,
          a_cap: int) -> dict:
    """One preset: the variants, then b on the checkpoint with the optimizer/EMA doubled."""
    report, ws = measure_preset(preset, variants, repeats, work, env, a_cap)
    report.update(mode="preset", machine=machine(), a_cap_bytes=a_cap)
    if double:
        report["doubled"] = doubled_run(ws, preset, report["checkpoint"]["parameters"], repeats)
    report["ratios"], report["not_computed"] = ratios(report)
    report["targets"] = evaluate_targets(report)
    return report


def doubled_run(ws: Workspace, preset: str, parameters: int, repeats: int) -> dict:
    """b on a checkpoint with twice the optimizer and EMA bytes: its peak must not move."""
    ws.ckpt.unlink()  # one checkpoint on disk at a time
    ws.state_file.unlink()  # d, e and v are done with it
    short = disk_shortfall(ws.work, doubled_disk_needed(parameters), "the doubled run")
    if short:
        print(f"doubled run skipped: {short}", file=sys.stderr)
        return {"skipped": short}
    doubled = ws.work / "dora" / "xps" / "bench-double" / "checkpoint.th"
    facts = build_checkpoint(doubled, preset, ws.compression_sig, double=True)
    runs = run_rounds(Workspace(ws.work, doubled, ws.env, ws.a_cap, ws.compression_sig), "b",
                      repeats)["b"]
    doubled.unlink()
    if runs.failed:
        return {"checkpoint": facts, "failed": runs.failed}
    summary = runs.summary()
    return {"checkpoint": facts, "median_peak_rss_bytes": summary["median_peak_rss_bytes"],
            "median_wall_s": summary["median_wall_s"]}


def series(sizes: list[str], repeats: int, work: Path, env: dict, variants: str,
           a_cap: int) -> dict:
    """The variants at each size, one checkpoint on disk at a time; wall time fitted as a
    fixed cost plus a cost per exported GB."""
    counts = {p: parameter_count(p) for p in sizes}
    largest = max(sizes, key=lambda p: counts[p])
    short = disk_shortfall(work, disk_needed(counts[largest]),
                           f"the series' largest size ({largest})")
    if short:
        raise SystemExit(f"{short}: free some, pass --workdir on a larger disk, or fewer "
                         "--series sizes")
    reports = []
    for preset in sizes:
        report, _ = measure_preset(preset, variants, repeats, work, env, a_cap)
        report["targets"] = evaluate_targets(report)
        reports.append(report)
        clean_workdir(work)
    return {"mode": "series", "repeats": repeats, "machine": machine(), "a_cap_bytes": a_cap,
            "sizes": reports, "largest": largest, "fit": fit_series(reports, variants)}


def exported_bytes(report: dict, variant: str) -> int:
    """The bytes a variant exports (or copies): its own output's, else the state file's."""
    return report["variants"][variant].get("exported_bytes") or report["exported_bytes"]


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (fixed, per_unit) of y = fixed + per_unit * x; None without two
    distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points],
                                                    [y for _, y in points])
    return intercept, slope


def fit_series(reports: list[dict], variants: str) -> dict:
    fit: dict[str, dict] = {}
    for v in variants:
        points = [(exported_bytes(r, v) / GB, r["variants"][v]["median_wall_s"])
                  for r in reports if r["variants"][v]["median_wall_s"] is not None]
        line = fit_line(points)
        fit[v] = {"points": points, "fixed_s": line[0] if line else None,
                  "per_gb_s": line[1] if line else None}
        if line is None:
            fit[v]["not_computed"] = "needs two sizes at least"
    return fit


# --- ratios and targets ----------------------------------------------------------------------
RATIOS = [(f"{kind}_{x}_over_{y}", kind, x, y) for kind in ("wall", "rss")
          for x, y in (("b", "a"), ("b", "d"), ("b", "e"), ("g", "d"), ("c", "v"), ("f", "c"))]
# Each target: the ratio and its limit per preset ("*": every preset; elsewhere it is printed
# for information only).
TARGETS: list[tuple[str, dict[str, float]]] = [
    ("wall_b_over_a", {"*": 0.2}),
    ("rss_b_over_a", {"*": 0.25}),
    ("wall_b_over_d", {"default": 1.3, "large": 1.5}),
    ("rss_b_over_d", {"*": 1.05}),
    ("rss_g_over_d", {"*": 1.05}),
    ("wall_c_over_v", {"large": 1.5}),
    ("rss_c_over_float32_model", {"large": 1.25}),
    ("wall_f_minus_generate_over_c", {"*": 1.2}),
    ("rss_b_doubled_change", {"*": 0.05}),
]
IDENTITIES = ["a_b_tensor_identical", "b_byte_identical"]


def _why_missing(report: dict, *variants: str) -> str:
    for v in variants:
        x = report["variants"].get(v)
        if x is None:
            return f"{v} not run (--variants)"
        if x.get("failed"):
            return f"{v} failed: {x['failed']}"
    return "not measured"


def ratios(report: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The ratios of medians, and why each one that is not there could not be computed."""
    v = report["variants"]
    median = {"wall": {k: x["median_wall_s"] for k, x in v.items()},
              "rss": {k: x["median_peak_rss_bytes"] for k, x in v.items()}}
    out: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name, kind, x, y in RATIOS:
        if median[kind].get(x) is not None and median[kind].get(y) is not None:
            out[name] = median[kind][x] / median[kind][y]
        else:
            missing[name] = _why_missing(report, x, y)
    if median["rss"].get("c") is not None:
        out["rss_c_over_float32_model"] = (median["rss"]["c"]
                                           / report["checkpoint"]["float32_model_bytes"])
    else:
        missing["rss_c_over_float32_model"] = _why_missing(report, "c")
    f_rest = v.get("f", {}).get("median_wall_minus_generate_s")
    if f_rest is not None and median["wall"].get("c") is not None:
        out["wall_f_minus_generate_over_c"] = f_rest / median["wall"]["c"]
    else:
        missing["wall_f_minus_generate_over_c"] = (
            _why_missing(report, "f", "c") if "f" not in v or v["f"].get("failed")
            or "c" not in v or v["c"].get("failed")
            else "f's export.json has no 'generate' check")
    doubled = report.get("doubled")
    if doubled and doubled.get("median_peak_rss_bytes") and median["rss"].get("b"):
        out["rss_b_doubled_change"] = doubled["median_peak_rss_bytes"] / median["rss"]["b"] - 1
    elif doubled:
        missing["rss_b_doubled_change"] = (f"doubled run: {doubled.get('skipped')}"
                                           if doubled.get("skipped")
                                           else f"doubled run failed: {doubled.get('failed')}")
    else:
        missing["rss_b_doubled_change"] = "no doubled run (--no-double, or a series)"
    return out, missing


def evaluate_targets(report: dict) -> list[dict]:
    """Each target's value, the limit at this preset and the verdict."""
    preset, found, missing = report["preset"], report["ratios"], report["not_computed"]
    out = []
    for name, limits in TARGETS:
        limit = limits.get(preset, limits.get("*"))
        value = found.get(name)
        if value is None:
            verdict = f"not computed: {missing.get(name, 'not measured')}"
        elif limit is None:
            verdict = "no target at this preset"
        else:
            verdict = "met" if abs(value) <= limit else "NOT met"
        out.append({"name": name, "value": value, "limit": limit, "limits": limits,
                    "verdict": verdict})
    for name in IDENTITIES:
        value = report.get(name)
        if isinstance(value, bool):
            verdict = "met" if value else "NOT met"
        else:
            verdict = "not computed: " + (_why_missing(report, "a") if name.startswith("a_")
                                          else "b ran once only")
        out.append({"name": name, "value": value, "limit": None, "limits": {},
                    "verdict": verdict})
    return out


def unexpected_failures(report: dict) -> list[str]:
    """Variants that failed other than export_lm needing more memory than its cap."""
    reports = report["sizes"] if report["mode"] == "series" else [report]
    return [f"{r['preset']} {v}: {x['failed']}" for r in reports
            for v, x in r["variants"].items() if x.get("failed")
            and not (v == "a" and x["failed"].startswith(("needs more than", "killed by")))]


# --- the report ------------------------------------------------------------------------------
def _mib(value: float | None) -> str:
    return "" if value is None else f"{value / MiB:.0f}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _rounds(repeats: int) -> str:
    return f"median of {repeats} rounds" if repeats > 1 else "1 round"


def _fields(record: dict) -> str:
    """A manifest record's scalar fields, bytes in MiB: names may change, all are shown."""
    parts = []
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        if isinstance(value, (int, float)) and key.endswith("bytes"):
            parts.append(f"{key}={value / MiB:.0f} MiB")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.2f}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def format_phases(report: dict) -> list[str]:
    """Per-phase and per-check figures from each release's export.json."""
    lines = [f"per phase at {report['preset']} (each variant's last export.json; the table's "
             "peak is the whole process's):"]
    for key, x in report["variants"].items():
        manifest = x.get("manifest")
        if not manifest:
            continue
        for phase, record in manifest["timings"].items():
            if isinstance(record, dict):
                lines.append(f"  {key} {phase}: {_fields(record)}")
        if manifest["checks"]:
            lines.append(f"  {key} checks: " + ", ".join(
                f"{c.get('check')} {_seconds(c.get('seconds'))} s"
                + ("" if c.get("ok", True) else " FAILED") for c in manifest["checks"]))
        for skipped in manifest["skipped"]:
            lines.append(f"  {key} skipped: {skipped}")
    return lines


def _variant_row(key: str, x: dict) -> str:
    if not x["wall_s"]:
        return (f"| {key}: {x['name']} | failed in round {x['failed_round']}: {x['failed']}; "
                "not run again | |")
    note = f" (failed in round {x['failed_round']}: {x['failed']})" if x.get("failed") else ""
    return (f"| {key}: {x['name']}{note} | {_seconds(x['median_wall_s'])} | "
            f"{_mib(x['median_peak_rss_bytes'])} |")


def format_targets(targets: list[dict], measured_only: bool = False) -> list[str]:
    lines = []
    for t in targets:
        if measured_only and t["value"] is None:
            continue
        if isinstance(t["value"], bool) or t["value"] is None:
            lines.append(f"{t['name']} = {t['value']}: {t['verdict']}")
            continue
        value = f"{t['value']:+.3f}" if t["name"].endswith("change") else f"{t['value']:.3f}"
        if t["limit"] is not None:
            lines.append(f"{t['name']} = {value} (target <= {t['limit']}): {t['verdict']}")
        else:
            where = ", ".join(f"{v} at {p}" for p, v in t["limits"].items())
            lines.append(f"{t['name']} = {value} (target {where}; none here)")
    return lines


def format_table(report: dict) -> str:
    """The report of one preset, as printed."""
    facts, m = report["checkpoint"], report["machine"]
    lines = [f"preset {report['preset']}: checkpoint {facts['bytes'] / GB:.2f} GB, "
             f"{facts['parameters'] / 1e6:.0f}M parameters (float32 model "
             f"{facts['float32_model_bytes'] / GB:.2f} GB), exported state "
             f"{report['exported_bytes'] / GB:.2f} GB; {_rounds(report['repeats'])}; "
             f"torch {m['torch']}, {m['cpus']} CPUs, {m['ram_bytes'] / GiB:.0f} GiB RAM; "
             f"a capped at {report['a_cap_bytes'] / GiB:.1f} GiB of address space",
             f"page cache: {report['page_cache']}",
             "", "| variant | wall (s) | peak RSS (MiB) |", "| --- | ---: | ---: |"]
    lines += [_variant_row(k, x) for k, x in report["variants"].items()]
    d = report.get("doubled")
    if d and "median_wall_s" in d:
        lines.append(f"| b on the checkpoint with optimizer/EMA doubled "
                     f"({d['checkpoint']['bytes'] / GB:.2f} GB) | {_seconds(d['median_wall_s'])}"
                     f" | {_mib(d['median_peak_rss_bytes'])} |")
    elif d:
        lines.append(f"| b on the doubled checkpoint | {d.get('skipped') or d.get('failed')} | |")
    lines.append("")
    f = report["variants"].get("f")
    if f and f["median_generate_s"] is not None:
        lines.append(f"f: generation {f['median_generate_s']:.2f} s (median), f without it "
                     f"{f['median_wall_minus_generate_s']:.2f} s")
    c = report["variants"].get("c")
    if c and c["median_peak_rss_bytes"] is not None:
        lines.append(f"c: peak RSS {report['ratios']['rss_c_over_float32_model']:.2f}x the "
                     f"float32 model ({facts['float32_model_bytes'] / MiB:.0f} MiB)")
    hashes = report["b_sha256"]
    lines += [f"a and b tensor-identical: {report['a_b_tensor_identical']}",
              f"b byte-identical across {len(hashes)} runs: {report['b_byte_identical']} "
              f"(sha256 {', '.join(sorted({h[:12] for h in hashes}))})", ""]
    lines += format_phases(report)
    lines += ["", *format_targets(report["targets"])]
    return "\n".join(lines)


def format_series(report: dict) -> str:
    """The size series, as printed: one row per size, the fit, the targets at each size."""
    sizes = report["sizes"]
    variants = list(sizes[0]["variants"])
    lines = [f"size series: {_rounds(report['repeats'])} per size, torch "
             f"{report['machine']['torch']}, {report['machine']['cpus']} CPUs", "",
             "| preset | checkpoint (GB) | exported (GB) | "
             + " | ".join(f"{v} wall (s) | {v} peak RSS (MiB)" for v in variants) + " |",
             "| --- | ---: | ---: |" + " ---: | ---: |" * len(variants)]
    for r in sizes:
        cells = [f"{_seconds(r['variants'][v]['median_wall_s']) or 'failed'} | "
                 f"{_mib(r['variants'][v]['median_peak_rss_bytes'])}" for v in variants]
        lines.append(f"| {r['preset']} | {r['checkpoint']['bytes'] / GB:.2f} | "
                     f"{r['exported_bytes'] / GB:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "wall = fixed + per GB x exported GB (least squares over the sizes):"]
    for v, fit in report["fit"].items():
        if fit["fixed_s"] is None:
            lines.append(f"  {v} ({VARIANTS[v]}): {fit['not_computed']}")
        else:
            lines.append(f"  {v} ({VARIANTS[v]}): {fit['fixed_s']:.2f} s + "
                         f"{fit['per_gb_s']:.2f} s/GB")
    for r in sizes:
        lines += ["", f"at {r['preset']}:", *format_targets(r["targets"], measured_only=True)]
    largest = next(r for r in sizes if r["preset"] == report["largest"])
    lines += ["", *format_phases(largest)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="quick")
    parser.add_argument("--series", nargs="?", const=",".join(SERIES), metavar="SIZES",
                        help="run the size series instead of one preset: comma-separated "
                             f"presets (default {','.join(SERIES)})")
    parser.add_argument("--variants", help=f"which variants, in round order (default "
                        f"{''.join(VARIANTS)}; {SERIES_VARIANTS} for --series)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--no-double", action="store_true",
                        help="skip the run on a checkpoint with twice the optimizer/EMA bytes")
    parser.add_argument("--a-cap-gb", type=float, default=(_ram_bytes() - 4 * GiB) / GiB,
                        help="address-space cap of export_lm (a), GiB (default: RAM - 4 GiB)")
    args = parser.parse_args()
    sizes = args.series.split(",") if args.series else []
    variants = args.variants or (SERIES_VARIANTS if sizes else "".join(VARIANTS))
    bad = [s for s in sizes if s not in PRESETS] + [v for v in variants if v not in VARIANTS]
    if bad or len(set(variants)) != len(variants):
        parser.error(f"unknown or repeated preset/variant: {bad or variants}")
    # The package measured is the one beside this script (the app runs from there too), not
    # whichever copy the environment has installed.
    sys.path.insert(0, str(ROOT))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="acx-bench-")
    work = args.workdir if tmp is None else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    clean_workdir(work)
    a_cap = int(args.a_cap_gb * GiB)
    try:
        if sizes:
            report = series(sizes, args.repeats, work, env, variants, a_cap)
        else:
            report = bench(args.preset, args.repeats, work, env, not args.no_double, variants,
                           a_cap)
    finally:
        clean_workdir(work)
        if tmp is not None:
            tmp.cleanup()
    print(format_series(report) if sizes else format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")
    failed = unexpected_failures(report)
    if failed:
        sys.exit("variants failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
