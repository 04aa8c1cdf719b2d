"""Hydra callback: after a multirun, one table and one JSON file for the whole sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

logger = logging.getLogger(__name__)
JOB_RECORD = "export_result.json"  # per job, in its Hydra output dir: written by app.run_job
SUMMARY_FILE = "sweep_summary.json"


class SweepSummary(Callback):
    """Collect each job's record from the sweep dir into sweep_summary.json and a table.

    Jobs write their record themselves (in their own process, wherever the launcher ran
    them), so this works for every launcher. Exits non-zero when any job failed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted((json.loads(p.read_text()) for p in sweep_dir.rglob(JOB_RECORD)),
                      key=lambda r: (r.get("job") is None, r.get("job")))
        failed = [j for j in jobs if j["status"] != "ok"]
        summary = {"sweep_dir": str(sweep_dir), "jobs": jobs, "succeeded": len(jobs) - len(failed),
                   "failed": len(failed)}
        (sweep_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        table = format_table(jobs)
        (sweep_dir / "sweep_summary.txt").write_text(table + "\n")
        print(table)
        logger.info("sweep summary written to %s", sweep_dir / SUMMARY_FILE)
        if failed:
            raise SystemExit(f"{len(failed)} of {len(jobs)} export jobs failed; "
                             f"see {sweep_dir / SUMMARY_FILE}")


def format_table(jobs: list[dict[str, Any]]) -> str:
    """The sweep as a table, one row per job, then the error line of each failed job. A job
    without a source (it failed before reading one) is named by its own overrides: those
    that differ between the jobs (``input.sig=0badc0de``), whole."""
    rows = [("job", "status", "source", "release", "state", "MiB", "sha256", "validation",
             "seconds")]
    common = _common_overrides(jobs)
    for j in jobs:
        source = _tail(j["source"]) if j.get("source") else _own_overrides(j, common)
        rows.append((str(j.get("job")), j["status"], source,
                     _tail(j.get("release", "-")), j.get("state", "-"),
                     f"{j['bytes'] / 2**20:.1f}" if "bytes" in j else "-",
                     j.get("sha256", "-")[:12], j.get("validation", "-"), f"{j['seconds']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"job {j.get('job')} error: {j['error']}" for j in jobs if j["status"] != "ok"]
    return "\n".join(lines)


def _tail(path: str, parts: int = 3) -> str:
    return str(Path(*Path(path).parts[-parts:])) if path != "-" else path


def _common_overrides(jobs: list[dict[str, Any]]) -> set[str]:
    """The overrides every job of the sweep has (those not swept)."""
    sets = [set(j.get("overrides", [])) for j in jobs]
    return set.intersection(*sets) if sets else set()


def _own_overrides(job: dict[str, Any], common: set[str]) -> str:
    """What tells ``job`` apart: its swept overrides, or (a sweep of one) its input's
    (input.sig, input.path), whole."""
    overrides = job.get("overrides", [])
    own = [o for o in overrides if o not in common] or [
        o for o in overrides if o.startswith(("input.sig=", "input.path="))]
    return " ".join(own) or "-"
