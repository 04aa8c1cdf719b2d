"""The benchmark script runs and reports (timings are its job, not the tests')."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow  # builds a checkpoint of over 400 MB and exports it five ways


def test_quick_preset_produces_the_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_export.py"), "--preset",
                           "quick", "--repeats", "1", "--no-double", "--workdir",
                           str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| a: export_lm |" in proc.stdout and "| e: cp |" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"a", "b", "c", "d", "e"}
    assert report["a_b_tensor_identical"] is True
    assert report["checkpoint"]["bytes"] > 400 << 20
    for v in report["variants"].values():
        assert v["median_wall_s"] > 0 and v["median_peak_rss_bytes"] > 0
    assert {"wall_b_over_a", "rss_b_over_d"} <= set(report["ratios"])
