"""The benchmark script runs and reports (timings are its job, not the tests'): its figures are
produced and positive, its identities hold, and its arithmetic (ratios, targets, fit, disk) is
right."""

import json
import subprocess
import sys
from collections import namedtuple

import pytest

from bench import bench_export as bench
from tests.support.helpers import ROOT

BENCH = ROOT / "bench" / "bench_export.py"


def run_bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), *args, "--workdir", str(tmp_path / "work"),
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow  # builds a 0.6 GB checkpoint and exports it eight ways
def test_quick_preset_produces_the_table_and_json(tmp_path):
    stdout, report = run_bench(tmp_path, "--preset", "quick", "--repeats", "1", "--no-double")
    assert "| a: export_lm |" in stdout and "| e: cp |" in stdout and "| v: " in stdout
    assert set(report["variants"]) == set("abcfgdev")
    for v in report["variants"].values():
        assert "failed" not in v
        assert v["median_wall_s"] > 0 and v["median_peak_rss_bytes"] > 0
    assert report["checkpoint"]["bytes"] > 400 << 20
    assert report["a_b_tensor_identical"] is True
    # the warm-up run and the round's run of b wrote the same bytes
    assert report["b_byte_identical"] is True and len(report["b_sha256"]) == 2

    f = report["variants"]["f"]
    assert "generate" in [c["check"] for c in f["manifest"]["checks"]]
    assert f["median_generate_s"] > 0
    assert 0 < f["median_wall_minus_generate_s"] < f["median_wall_s"]
    for key in "bcfg":  # the per-phase figures of each release's export.json
        timings = report["variants"][key]["manifest"]["timings"]
        assert timings["export"]["seconds"] > 0
        assert any(k.endswith("bytes") and x > 0 for k, x in timings["export"].items())
    assert report["variants"]["c"]["manifest"]["timings"]["validation"]["seconds"] > 0
    assert "per phase at quick" in stdout and "f checks: " in stdout

    assert {"wall_b_over_a", "rss_b_over_d", "rss_g_over_d", "wall_c_over_v",
            "rss_c_over_float32_model", "wall_f_minus_generate_over_c"} <= set(report["ratios"])
    verdicts = {t["name"]: t["verdict"] for t in report["targets"]}
    assert {name for name, _ in bench.TARGETS} <= set(verdicts)
    assert verdicts["a_b_tensor_identical"] == verdicts["b_byte_identical"] == "met"
    assert verdicts["rss_b_doubled_change"].startswith("not computed")
    assert all(v in ("met", "NOT met", "no target at this preset")
               for name, v in verdicts.items() if name != "rss_b_doubled_change")
    assert not list((tmp_path / "work").iterdir())  # the checkpoint and outputs are removed


@pytest.mark.slow  # builds two checkpoints (0.15 and 0.6 GB), one at a time
def test_series_fits_a_fixed_cost_plus_a_cost_per_exported_gb(tmp_path):
    stdout, report = run_bench(tmp_path, "--series", "tiny,quick", "--repeats", "1")
    sizes = report["sizes"]
    assert [r["preset"] for r in sizes] == ["tiny", "quick"]
    assert sizes[0]["exported_bytes"] < sizes[1]["exported_bytes"]
    for r in sizes:
        assert set(r["variants"]) == set("bgde")
        assert all(v["median_wall_s"] > 0 for v in r["variants"].values())
        assert {"rss_b_over_d", "rss_g_over_d"} <= set(r["ratios"])
    for key in "bgd":
        fit = report["fit"][key]
        assert len(fit["points"]) == 2
        # two sizes: the least-squares line goes through both
        for gb, wall in fit["points"]:
            assert fit["fixed_s"] + fit["per_gb_s"] * gb == pytest.approx(wall)
    assert "s/GB" in stdout and "at quick:" in stdout and "per phase at quick" in stdout
    assert not list((tmp_path / "work").iterdir())


def test_fit_needs_two_sizes():
    fixed, per_gb = bench.fit_line([(1.0, 3.0), (2.0, 5.0), (3.0, 7.5)])
    assert per_gb == pytest.approx(2.25) and fixed == pytest.approx(2 / 3)
    assert bench.fit_line([(1.0, 3.0), (1.0, 4.0)]) is None


def test_disk_check_names_what_is_needed_and_free(tmp_path, monkeypatch):
    parameters = 10**9
    needed = bench.disk_needed(parameters)
    # checkpoint (18 bytes a parameter), state-sized file and one output (2 each), margin
    assert needed == 22 * parameters + 16 * 2**20 + 2**30
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda _: usage(0, 0, needed - 1))
    message = bench.disk_shortfall(tmp_path, needed, "preset large")
    assert message.startswith(f"preset large needs {needed / 1e9:.1f} GB of free disk in ")
    assert message.endswith(f"{(needed - 1) / 1e9:.1f} GB free")
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda _: usage(0, 0, needed))
    assert bench.disk_shortfall(tmp_path, needed, "preset large") is None


def _report(preset, **medians):
    variants = {k: {"name": k, "median_wall_s": w, "median_peak_rss_bytes": r}
                for k, (w, r) in medians.items()}
    return {"preset": preset, "variants": variants,
            "checkpoint": {"float32_model_bytes": 1000}, "a_b_tensor_identical": None,
            "b_byte_identical": True}


def _verdicts(report):
    report["ratios"], report["not_computed"] = bench.ratios(report)
    return {t["name"]: t["verdict"] for t in bench.evaluate_targets(report)}


def test_targets_apply_per_preset_and_say_why_a_ratio_is_missing():
    medians = {"b": (1.4, 1000), "d": (1.0, 1000), "c": (3.0, 1300), "v": (2.0, 900)}
    at_default = _verdicts(_report("default", **medians))
    at_large = _verdicts(_report("large", **medians))
    at_quick = _verdicts(_report("quick", **medians))
    assert at_default["wall_b_over_d"] == "NOT met"  # 1.4 > 1.3
    assert at_large["wall_b_over_d"] == "met"  # 1.4 <= 1.5
    assert at_quick["wall_b_over_d"] == "no target at this preset"
    assert at_large["rss_c_over_float32_model"] == "NOT met"  # 1.3 > 1.25
    assert at_large["wall_c_over_v"] == "met"
    assert at_large["rss_b_over_a"] == "not computed: a not run (--variants)"

    report = _report("large", **medians, a=(None, None))
    report["variants"]["a"]["failed"] = "needs more than 19.5 GiB"
    verdicts = _verdicts(report)
    assert verdicts["wall_b_over_a"] == "not computed: a failed: needs more than 19.5 GiB"
    assert verdicts["a_b_tensor_identical"].startswith("not computed: a failed")
    report["mode"] = "preset"
    assert bench.unexpected_failures(report) == []  # export_lm beyond its cap is a result
    report["variants"]["f"] = {"failed": "validation 'generate' failed: ..."}
    assert bench.unexpected_failures(report) == ["large f: validation 'generate' failed: ..."]
