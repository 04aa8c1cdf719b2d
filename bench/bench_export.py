"""Benchmark: our export against audiocraft's export_lm and a plain file copy.

Builds a MusicGen-shaped training checkpoint in the solver's key layout (fp32 model, AdamW with
both moments, EMA, float16 best state, empty fsdp_best_state, history, Hydra-composed xp.cfg),
then runs each variant in a fresh process, alternating, and reports the median wall time and
peak RSS of each:

  a  audiocraft.utils.export.export_lm (made to load the file on this torch)
  b  export_app.py validate=none
  c  export_app.py validate=load
  d  the floor for any torch-based exporter: import torch + shutil.copyfile of a file as large
     as the exported state
  e  cp of that file

    python bench/bench_export.py --preset quick       # ~0.6 GB checkpoint, a minute
    python bench/bench_export.py --preset default     # ~4 GB checkpoint (220M parameters)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (transformer dim, layers, heads): parameters ~ 16 * dim^2 * layers + 8 * 2049 * dim
PRESETS = {"quick": (512, 6, 8), "default": (1024, 12, 16)}
VARIANTS = {
    "a": "export_lm",
    "b": "ours validate=none",
    "c": "ours validate=load",
    "d": "import torch + copyfile",
    "e": "cp",
}
_MEASURE = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
            "wall = time.perf_counter() - t\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
            "sys.stderr.write(r.stderr.decode()[-2000:] if r.returncode else '')\n"
            "print(wall, peak)\n"
            "sys.exit(r.returncode)\n")
_EXPORT_LM = ("import functools, sys, torch\n"
              "torch.load = functools.partial(torch.load, weights_only=False)  # torch >= 2.6\n"
              "from audiocraft.utils.export import export_lm\n"
              "export_lm(sys.argv[1], sys.argv[2])\n")
_COPY = "import shutil, sys, torch\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"


def build_checkpoint(path: Path, preset: str, double: bool = False) -> dict:
    """Write a MusicGen-shaped solver checkpoint; return its facts."""
    import torch
    from audiocraft.models import builders
    from audiocraft.utils.checkpoint import save_checkpoint

    from audiocraft_ext.demo import compose_xp_config, xp_signature

    dim, layers, heads = PRESETS[preset]
    cfg = compose_xp_config("musicgen", [
        "compression_model_checkpoint=//pretrained/debug_compression_model",
        f"transformer_lm.dim={dim}", f"transformer_lm.num_layers={layers}",
        f"transformer_lm.num_heads={heads}", "transformer_lm.card=2048"])
    torch.manual_seed(0)
    model = builders.get_lm_model(cfg)
    params = dict(model.named_parameters())
    copies = 2 if double else 1
    optimizer = {
        "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(p) * 1e-3,
                      "exp_avg_sq": torch.rand_like(p) * 1e-6}
                  for i, p in enumerate(list(params.values()) * copies)},
        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                          "amsgrad": False, "params": list(range(len(params) * copies))}],
    }
    state = model.state_dict()
    ema = {name: v.clone() for name, v in state.items()}
    if double:
        ema.update({f"shadow.{name}": v.clone() for name, v in state.items()})
    pkg = {
        "history": [{"train": {"ce": 5.0 - e / 10}, "valid": {"ce": 5.1 - e / 10}}
                    for e in range(20)],
        "xp.cfg": cfg,
        "xp.sig": xp_signature(cfg),
        "best_state": {"model": {k: v.to(torch.float16) for k, v in state.items()}},
        "fsdp_best_state": {},
        "model": state,
        "optimizer": optimizer,
        "lr_scheduler": None,
        "ema": {"state": {"model": ema}, "count": 1000.0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(pkg, path)
    n_params = sum(p.numel() for p in params.values())
    return {"path": str(path), "bytes": path.stat().st_size, "parameters": n_params,
            "best_state_bytes": n_params * 2, "optimizer_ema_doubled": double}


def _measure(cmd: list[str], env: dict) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{out.stderr}")
    wall, peak = out.stdout.split()
    return float(wall), int(peak)


def _commands(variant: str, ckpt: Path, state_file: Path, work: Path) -> list[str]:
    out = work / f"out-{variant}"
    app = [sys.executable, str(ROOT / "export_app.py"), "input=checkpoint",
           f"input.path={ckpt}", "compression=none", f"output.dir={out}",
           f"hydra.run.dir={work / 'hydra' / variant}"]
    return {
        "a": [sys.executable, "-c", _EXPORT_LM, str(ckpt), str(out / "state_dict.bin")],
        "b": [*app, "validate=none"],
        "c": [*app, "validate=load"],
        "d": [sys.executable, "-c", _COPY, str(state_file), str(out / "copy.bin")],
        "e": ["cp", str(state_file), str(out / "copy.bin")],
    }[variant]


def _clean(work: Path, variant: str) -> None:
    shutil.rmtree(work / f"out-{variant}", ignore_errors=True)
    for lock in work.glob(f".out-{variant}.*"):
        lock.unlink()
    if variant in "ade":
        (work / f"out-{variant}").mkdir()


def run_variants(ckpt: Path, work: Path, repeats: int, variants: str, env: dict,
                 state_file: Path) -> dict[str, list[tuple[float, int]]]:
    results: dict[str, list[tuple[float, int]]] = {v: [] for v in variants}
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate: no variant always first
        for v in order:
            _clean(work, v)
            results[v].append(_measure(_commands(v, ckpt, state_file, work), env))
            print(f"  repeat {r + 1}/{repeats} {v} ({VARIANTS[v]}): "
                  f"{results[v][-1][0]:.2f} s, {results[v][-1][1] / 2**20:.0f} MiB",
                  file=sys.stderr)
    return results


def tensors_identical(a: Path, b: Path) -> bool:
    import torch

    x = torch.load(a, map_location="cpu", weights_only=True)
    y = torch.load(b, map_location="cpu", weights_only=True)
    xs, ys = x["best_state"], y["best_state"]
    return (x["xp.cfg"] == y["xp.cfg"] and xs.keys() == ys.keys()
            and all(xs[k].dtype == ys[k].dtype and torch.equal(xs[k], ys[k]) for k in xs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--no-double", action="store_true",
                        help="skip the run on a checkpoint with twice the optimizer/EMA bytes")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="acx-bench-")
    work = args.workdir if tmp is None else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = bench(args.preset, args.repeats, work, env, double=not args.no_double)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")


def bench(preset: str, repeats: int, work: Path, env: dict, double: bool) -> dict:
    start = time.perf_counter()
    ckpt = work / "dora" / "xps" / "bench" / "checkpoint.th"
    facts = build_checkpoint(ckpt, preset)
    print(f"built {facts['bytes'] / 2**30:.2f} GiB checkpoint ({facts['parameters'] / 1e6:.0f}M "
          f"parameters) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    # the file copied by d and e: as large as the exported state (b's own output)
    state_file = work / "state-sized.bin"
    _clean(work, "b")
    _measure(_commands("b", ckpt, state_file, work), env)
    shutil.copyfile(work / "out-b" / "state_dict.bin", state_file)
    runs = run_variants(ckpt, work, repeats, "abcde", env, state_file)
    identical = tensors_identical(work / "out-a" / "state_dict.bin",
                                  work / "out-b" / "state_dict.bin")
    report = {
        "preset": preset, "repeats": repeats, "checkpoint": facts,
        "exported_bytes": state_file.stat().st_size,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": _torch_version()},
        "page_cache": "warm: every file was just written or read",
        "variants": {v: {"name": VARIANTS[v], "wall_s": [w for w, _ in r],
                         "peak_rss_bytes": [p for _, p in r],
                         "median_wall_s": statistics.median(w for w, _ in r),
                         "median_peak_rss_bytes": statistics.median(p for _, p in r)}
                     for v, r in runs.items()},
        "a_b_tensor_identical": identical,
    }
    if double:
        doubled = work / "dora" / "xps" / "bench-double" / "checkpoint.th"
        ckpt.unlink()  # keep the disk footprint to one checkpoint at a time
        facts2 = build_checkpoint(doubled, preset, double=True)
        runs2 = run_variants(doubled, work, repeats, "b", env, state_file)
        report["doubled"] = {"checkpoint": facts2,
                             "median_peak_rss_bytes": statistics.median(p for _, p in runs2["b"]),
                             "median_wall_s": statistics.median(w for w, _ in runs2["b"])}
    report["ratios"] = ratios(report)
    return report


def _torch_version() -> str:
    import torch

    return torch.__version__


def ratios(report: dict) -> dict:
    v = report["variants"]
    wall = {k: x["median_wall_s"] for k, x in v.items()}
    rss = {k: x["median_peak_rss_bytes"] for k, x in v.items()}
    out = {"wall_b_over_a": wall["b"] / wall["a"], "rss_b_over_a": rss["b"] / rss["a"],
           "wall_b_over_d": wall["b"] / wall["d"], "rss_b_over_d": rss["b"] / rss["d"],
           "wall_b_over_e": wall["b"] / wall["e"], "rss_b_over_e": rss["b"] / rss["e"]}
    if "doubled" in report:
        out["rss_b_doubled_change"] = report["doubled"]["median_peak_rss_bytes"] / rss["b"] - 1
    return out


TARGETS = [("rss_b_over_a", 0.25), ("wall_b_over_a", 0.2), ("wall_b_over_d", 1.3),
           ("rss_b_over_d", 1.25), ("rss_b_doubled_change", 0.05)]


def format_table(report: dict) -> str:
    facts = report["checkpoint"]
    lines = [f"preset {report['preset']}: checkpoint {facts['bytes'] / 2**30:.2f} GiB, "
             f"{facts['parameters'] / 1e6:.0f}M parameters, exported state "
             f"{report['exported_bytes'] / 2**30:.2f} GiB; median of {report['repeats']} runs; "
             f"torch {report['machine']['torch']}, {report['machine']['cpus']} CPUs",
             "", "| variant | wall (s) | peak RSS (MiB) |", "| --- | ---: | ---: |"]
    for key, x in report["variants"].items():
        lines.append(f"| {key}: {x['name']} | {x['median_wall_s']:.2f} | "
                     f"{x['median_peak_rss_bytes'] / 2**20:.0f} |")
    if "doubled" in report:
        d = report["doubled"]
        lines.append(f"| b on the checkpoint with optimizer/EMA doubled "
                     f"({d['checkpoint']['bytes'] / 2**30:.2f} GiB) | {d['median_wall_s']:.2f} | "
                     f"{d['median_peak_rss_bytes'] / 2**20:.0f} |")
    lines += ["", f"a and b tensor-identical: {report['a_b_tensor_identical']}", ""]
    r = report["ratios"]
    for name, limit in TARGETS:
        if name in r:
            verdict = "met" if abs(r[name]) <= limit else "NOT met"
            lines.append(f"{name} = {r[name]:+.3f} (target <= {limit}): {verdict}"
                         if name.endswith("change") else
                         f"{name} = {r[name]:.3f} (target <= {limit}): {verdict}")
    lines.append(f"wall_b_over_e = {r['wall_b_over_e']:.2f}, "
                 f"rss_b_over_e = {r['rss_b_over_e']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
