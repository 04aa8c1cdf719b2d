"""mode=list: one line per XP of a Dora dir, from each checkpoint's pickled structure alone.

The safe loader leaves tensors on disk (a storage's bytes are read only when a tensor is asked
for), so an XP costs its ``data.pkl`` and zip directory whatever its weights, optimizer and
EMA states weigh: parameters are counted from shapes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import InputConfig, ListConfig, StateChoice, XPInput
from ..errors import ExportError, first_line, one_line
from ..reporting.manifest import StateFacts
from ..untrusted.averaging import epoch_checkpoints
from ..untrusted.sources import default_dora_dir, resolve_checkpoint
from ..untrusted.states import load_solver_checkpoint, select_state
from ..untrusted.training_history import BEST_METRIC, BEST_STAGE, summarize_history
from ..untrusted.xp_config import raw_value, xp_config
from ..writing.release_format import MANIFEST_FILE, json_text

logger = logging.getLogger(__name__)

# The metric shown per family: the one its solver picks the best state by, and for EnCodec
# (no best metric: its best state is its last) the reconstruction quality it logs.
SHOWN_METRIC = {**BEST_METRIC, "compression": "sisnr"}
MAX_EPOCHS_SHOWN = 4  # epoch checkpoint numbers listed in the table; more become a range


@dataclass
class XPEntry:
    """What the listing says about one XP folder; ``None`` where it could not be read."""

    sig: str  # the folder's name under xps/
    path: str
    solver: str | None = None
    state: str | None = None  # the checkpoint key state=auto exports
    parameters: int | None = None  # of that state
    epochs: int | None = None
    metric: str | None = None  # the family's metric (SHOWN_METRIC)
    last: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> metric -> value
    best_epoch: int | None = None  # by the family's best metric, when it has one
    best_value: float | None = None
    checkpoint_bytes: int | None = None
    epoch_checkpoints: list[int] = field(default_factory=list)
    releases: list[str] | None = None  # release folders naming this XP; None: not looked for
    problems: list[str] = field(default_factory=list)  # one line each

    def valid(self, metric: str | None) -> float | None:
        """The last epoch's valid value of ``metric`` (None when not logged, or NaN)."""
        value = self.last.get(BEST_STAGE, {}).get(metric or "")
        return None if value is None or math.isnan(value) else value


def resolve_dora_dir(spec: InputConfig) -> Path:
    """The Dora dir that mode=list describes: input=xp's dora_dir, else $AUDIOCRAFT_DORA_DIR."""
    if not isinstance(spec, XPInput):
        raise ExportError("mode=list describes the XPs of a Dora dir: use input=xp "
                          "input.dora_dir=DIR (or set AUDIOCRAFT_DORA_DIR)")
    if spec.sig or spec.path or spec.epoch is not None:
        raise ExportError("mode=list lists every XP of the Dora dir: drop input.sig, "
                          "input.path and input.epoch")
    root = Path(spec.dora_dir).expanduser() if spec.dora_dir else default_dora_dir()
    if root is None:
        raise ExportError("mode=list needs input.dora_dir=DIR or AUDIOCRAFT_DORA_DIR: the "
                          "folder holding xps/")
    if not (root / "xps").is_dir():
        raise ExportError(f"{root} is not a Dora dir: it has no xps/ folder")
    return root


def list_xps(dora_dir: Path, releases: Path | None = None, trust: bool = False,
             ) -> list[XPEntry]:
    """Describe every folder of ``<dora_dir>/xps``, by signature; with ``releases``, name the
    release folders there that were exported from each XP."""
    released = releases_by_sig(releases) if releases is not None else None
    folders = sorted(p for p in (dora_dir / "xps").iterdir() if p.is_dir())
    return [describe_xp(folder, released, trust) for folder in folders]


def describe_xp(xp_dir: Path, released: Mapping[str, list[str]] | None = None,
                trust: bool = False) -> XPEntry:
    """One XP folder: its checkpoint.th read without tensor bytes. A problem (no checkpoint,
    an unreadable one, no usable state, anything unexpected in what it holds) is recorded in
    the entry, never raised: one broken XP does not hide the others."""
    entry = XPEntry(sig=xp_dir.name, path=str(xp_dir),
                    releases=None if released is None else released.get(xp_dir.name, []))
    try:
        _describe(xp_dir, entry, trust)
    except Exception as exc:  # noqa: BLE001  (a listing reports every XP, broken ones too)
        entry.problems.append(f"cannot be described: {type(exc).__name__}: {first_line(exc)}")
    return entry


def _describe(xp_dir: Path, entry: XPEntry, trust: bool) -> None:
    try:
        entry.epoch_checkpoints = list(epoch_checkpoints(xp_dir))
        path = resolve_checkpoint(xp_dir).path
        entry.checkpoint_bytes = path.stat().st_size
        pkg = load_solver_checkpoint(path, trust=trust)
    except ExportError as exc:
        entry.problems.append(str(exc))
        return
    except OSError as exc:  # an XP folder this user may not read
        entry.problems.append(one_line(f"cannot read {xp_dir}: {exc.strerror or exc}"))
        return
    try:
        solver = raw_value(xp_config(pkg, str(path)), "solver")
        entry.solver = one_line(solver, 40) if isinstance(solver, str) else None
    except ExportError as exc:
        entry.problems.append(str(exc))
    summary = summarize_history(pkg.get("history"), entry.solver)
    entry.epochs, entry.last = summary.epochs, summary.last
    entry.best_epoch, entry.best_value = summary.best_epoch, summary.best_value
    entry.metric = SHOWN_METRIC.get(entry.solver or "")
    try:
        entry.state, state = select_state(pkg, StateChoice.auto, str(path))
        entry.parameters = StateFacts.of(state).parameters  # from shapes: no bytes read
    except ExportError as exc:
        entry.problems.append(str(exc))


def releases_by_sig(root: Path) -> dict[str, list[str]]:
    """The release folders directly under ``root`` (names), by the XP signature their
    ``export.json`` records as ``source.xp_sig``."""
    if not root.is_dir():
        raise ExportError(f"list.releases={root}: no such folder")
    found: dict[str, list[str]] = {}
    for folder in sorted(root.iterdir()):
        manifest = folder / MANIFEST_FILE
        # dot-folders are releases being written (.<name>.staging-<pid>): not published yet
        if folder.name.startswith(".") or not manifest.is_file():
            continue
        sig = _manifest_sig(manifest)
        if sig is not None:
            found.setdefault(sig, []).append(folder.name)
    return found


def _manifest_sig(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        logger.warning("%s is not a readable release manifest (%s); skipped", path,
                       first_line(exc))
        return None
    source = data.get("source") if isinstance(data, dict) else None
    sig = source.get("xp_sig") if isinstance(source, dict) else None
    return sig if isinstance(sig, str) else None


# --- order ---------------------------------------------------------------------------------
SORT_KEYS: dict[str, Callable[[XPEntry], Any]] = {
    "sig": lambda e: e.sig, "solver": lambda e: e.solver, "epochs": lambda e: e.epochs,
    "params": lambda e: e.parameters, "size": lambda e: e.checkpoint_bytes}


def sort_entries(entries: Sequence[XPEntry], key: str | None) -> list[XPEntry]:
    """``entries`` ascending by ``key`` (a :data:`SORT_KEYS` name, or a metric's last valid
    value), those without a value last, ties by signature."""
    if key is None:
        key = "sig"
    value = SORT_KEYS.get(key) or (lambda e: e.valid(key))
    if key not in SORT_KEYS and entries and all(value(e) is None for e in entries):
        logged = sorted({m for e in entries for m in e.last.get(BEST_STAGE, {})})
        raise ExportError(f"list.sort={key}: no XP logs a valid metric of that name; sort by "
                          f"{', '.join(SORT_KEYS)} or one of: {', '.join(logged) or 'none'}")
    return sorted(entries, key=lambda e: (value(e) is None, value(e) or 0, e.sig))


# --- output --------------------------------------------------------------------------------
def format_listing(entries: Sequence[XPEntry], as_json: bool = False) -> str:
    """One JSON list, or an aligned table with a header line (the release column only when
    releases were looked for, the problem column only when an XP has one)."""
    if as_json:
        return json_text([dataclasses.asdict(e) for e in entries])
    with_releases = any(e.releases is not None for e in entries)
    with_problems = any(e.problems for e in entries)
    header = ["sig", "solver", "params", "epochs", "metric", "last", "best@epoch", "MiB",
              "epoch_ckpts", *(["release"] if with_releases else []),
              *(["problem"] if with_problems else [])]
    rows = [header, *(_row(e, with_releases, with_problems) for e in entries)]
    right = {"params", "epochs", "last", "best@epoch", "MiB"}
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) if name in right else cell.ljust(w)
                  for name, cell, w in zip(header, row, widths, strict=True)).rstrip()
        for row in rows)


def _row(e: XPEntry, with_releases: bool, with_problems: bool) -> list[str]:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    best = "-" if e.best_value is None else f"{e.best_value:.4g}@{e.best_epoch}"
    cells = [one_line(e.sig, 64), e.solver or "-",
             "-" if e.parameters is None else f"{e.parameters:,}",
             "-" if e.epochs is None else str(e.epochs), e.metric or "-",
             number(e.valid(e.metric)), best,
             "-" if e.checkpoint_bytes is None else f"{e.checkpoint_bytes / 2**20:.1f}",
             _epochs(e.epoch_checkpoints)]
    if with_releases:
        cells.append(", ".join(one_line(r, 64) for r in e.releases or []) or "-")
    return [*cells, "; ".join(e.problems)] if with_problems else cells


def _epochs(epochs: Sequence[int]) -> str:
    if len(epochs) > MAX_EPOCHS_SHOWN:
        return f"{epochs[0]}..{epochs[-1]} ({len(epochs)})"
    return ",".join(map(str, epochs)) or "-"


def list_command(spec: InputConfig, options: ListConfig) -> str:
    """mode=list: the table (or JSON) of the Dora dir that ``spec`` designates."""
    dora_dir = resolve_dora_dir(spec)
    started = time.perf_counter()
    entries = list_xps(dora_dir, Path(options.releases) if options.releases else None,
                       trust=spec.trust)
    entries = sort_entries(entries, options.sort)
    failed = sum(1 for e in entries if e.problems)
    logger.info("listed %d XPs of %s in %.2f s%s", len(entries), dora_dir,
                time.perf_counter() - started,
                f"; {failed} with a problem (see their lines)" if failed else "")
    return format_listing(entries, as_json=options.json)
