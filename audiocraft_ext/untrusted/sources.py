"""Resolve what the user pointed at (the demo, a file, an XP folder, a Dora signature) to the
checkpoint file to export."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import CheckpointInput, InputConfig, WeightsInput, XPInput
from ..errors import ExportError, setting, shown

logger = logging.getLogger(__name__)

SIG_PREFIX = "//sig/"
PRETRAINED_PREFIX = "//pretrained/"
_RANK_SHARD = re.compile(r"^(?P<base>.+\.th)\.(?P<rank>\d+)$")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{1,64}")
LISTED_XPS = 3  # signatures named in a message about a Dora dir
# how alike (difflib's ratio) a signature must be to an unknown one to be suggested
SIMILAR_SIGNATURE = 0.5
# the files of a release folder (audiocraft's export_lm / export_encodec): no export needed
RELEASE_FILES = {"state_dict.bin": "MusicGen", "compression_state_dict.bin": "CompressionModel"}


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved training checkpoint and the Dora context it lives in."""

    path: Path
    name: str  # used to name the release folder: the XP signature, plus the epoch if any
    dora_dir: Path | None  # the folder holding xps/, when the checkpoint sits in one


@dataclass(frozen=True)
class WeightsSource(CheckpointSource):
    """Weights trained elsewhere (``input=weights``) and the base that gives their config."""

    base: str | None = None  # input.base, resolved when the export reads it


def resolve_weights(spec: WeightsInput) -> WeightsSource:
    """``input=weights``: the weights file or folder (what it holds is read by the export)."""
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise ExportError(f"{path}: no such weights file or folder")
    path = path.resolve()
    name = path.name if path.is_dir() else path.stem
    return WeightsSource(path=path, name=name, dora_dir=None, base=spec.base)


def checkpoint_filename(epoch: int | None = None) -> str:
    """Name of a solver checkpoint, as audiocraft.utils.checkpoint.checkpoint_name writes it."""
    return "checkpoint.th" if epoch is None else f"checkpoint_{epoch}.th"


def dora_dir_of(path: Path) -> Path | None:
    """The Dora dir of a checkpoint stored as <dora_dir>/xps/<sig>/<file>, else None."""
    xp_dir = path.parent
    return xp_dir.parent.parent if xp_dir.parent.name == "xps" else None


def resolve_checkpoint(path: str | Path, epoch: int | None = None) -> CheckpointSource:
    """Resolve a checkpoint file or an XP folder (then ``checkpoint[_<epoch>].th`` inside it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / checkpoint_filename(epoch)
        if os.path.lexists(candidate) and not candidate.is_file():
            raise ExportError(f"{candidate} is not a checkpoint file ("
                              + ("a folder" if candidate.is_dir() else "not a regular file")
                              + ")")
        if not candidate.is_file():
            release = _release_folder(path)
            if release:
                raise ExportError(release)
            found = sorted(p.name for p in path.glob("checkpoint*.th"))
            hint = f" (found: {', '.join(found)})" if found else " and no checkpoint*.th at all"
            raise ExportError(f"{path} is a folder without {candidate.name}{hint}")
        path = candidate
    elif epoch is not None:
        raise ExportError(f"input.epoch={epoch} needs an XP folder, but {path} is a file")
    shard = _RANK_SHARD.match(path.name)
    if shard:
        raise ExportError(
            f"{path} is the FSDP shard of rank {shard['rank']}; export the rank-0 file "
            f"{path.with_name(shard['base'])}, whose fsdp_best_state holds the full model")
    if not path.exists():
        raise ExportError(f"{path}: no such checkpoint file or XP folder")
    path = path.resolve()
    name = path.parent.name if path.name == "checkpoint.th" else path.stem
    if path.name.startswith("checkpoint_") and path.parent.parent.name == "xps":
        name = f"{path.parent.name}_{path.stem[len('checkpoint_'):]}"
    return CheckpointSource(path=path, name=name, dora_dir=dora_dir_of(path))


def _release_folder(path: Path) -> str | None:
    """What to say when the folder ``path`` is a release (exported), not an XP folder."""
    held = [name for name in RELEASE_FILES if (path / name).is_file()]
    if not held:
        return None
    model_class = RELEASE_FILES[held[0]]
    also = " (AudioGen and MAGNeT alike)" if model_class == "MusicGen" else ""
    return (f"{path} is a release folder (exported: {', '.join(held)}, no checkpoint.th): it "
            f"needs no export; load it with {model_class}.get_pretrained({str(path)!r}){also}")


ARGV_FILE = ".argv.json"  # what Dora writes into an XP folder: the overrides it was run with
MAX_ARGV_BYTES = 1 << 20


def dora_argv(xp_dir: Path) -> list[str] | None:
    """The overrides the XP was launched with (``dora run ARGS``), from its ``.argv.json``;
    None when there is none or it is not a list of strings (it is read as data, never
    trusted)."""
    path = xp_dir / ARGV_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_ARGV_BYTES:
            return None
        argv = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return None
    return argv


def fsdp_shards(path: Path) -> list[Path]:
    """The other ranks' shards of the rank-0 checkpoint ``path`` (``<name>.th.<rank>``)."""
    shards = {int(shard["rank"]): p for p in path.parent.iterdir()
              if (shard := _RANK_SHARD.match(p.name)) and shard["base"] == path.name}
    return [shards[rank] for rank in sorted(shards)]


def default_dora_dir() -> Path | None:
    value = os.environ.get("AUDIOCRAFT_DORA_DIR")
    return Path(value) if value else None


def resolve_signature(sig: str, dora_dir: str | Path | None, epoch: int | None = None,
                      ) -> CheckpointSource:
    """Resolve ``<dora_dir>/xps/<sig>``; dora_dir defaults to ``$AUDIOCRAFT_DORA_DIR``."""
    sig = sig[len(SIG_PREFIX):] if sig.startswith(SIG_PREFIX) else sig
    if not _SIGNATURE.fullmatch(sig):  # it may come from a checkpoint's xp.cfg: no "../"
        raise ExportError(f"{shown(sig)} is not an XP signature (letters, digits, '_' and '-')")
    root = Path(dora_dir).expanduser() if dora_dir else default_dora_dir()
    if root is None:
        raise ExportError(f"cannot resolve XP signature {shown(sig)}: set input.dora_dir "
                          "or AUDIOCRAFT_DORA_DIR to the folder holding xps/")
    xp_dir = root / "xps" / sig
    if not xp_dir.is_dir():
        raise ExportError(f"no XP {shown(sig)} in {root / 'xps'} ({xps_summary(root, sig)})"
                          + _dora_dir_hint(root, given=dora_dir is not None))
    return resolve_checkpoint(xp_dir, epoch)


def _dora_dir_hint(root: Path, given: bool) -> str:
    """What to give instead when the Dora dir ``root`` holds no xps/ folder."""
    if (root / "xps").is_dir():
        return ""
    if root.name == "xps" and root.is_dir():
        return (f": {root} is the xps/ folder of the Dora dir {root.parent}, not the Dora dir; "
                f"give its parent, {setting('input.dora_dir', root.parent)}")
    if not given:
        where = f"AUDIOCRAFT_DORA_DIR is {shown(str(root))}"
    elif str(root) == "." and not os.environ.get("AUDIOCRAFT_DORA_DIR"):
        where = (f"{setting('input.dora_dir')} is '.', the current folder "
                 f"({Path.cwd()}), as AUDIOCRAFT_DORA_DIR is not set")
    else:
        where = f"{setting('input.dora_dir')} is {shown(str(root))}"
    return (f": {where}; set AUDIOCRAFT_DORA_DIR or {setting('input.dora_dir')} to the Dora "
            "dir, the folder holding xps/")


def xps_summary(dora_dir: Path, near: str | None = None) -> str:
    """How many XPs ``dora_dir/xps`` holds and a few signatures: those most similar to ``near``
    (difflib's ratio, the most similar first), else the first ones."""
    xps = dora_dir / "xps"
    if not xps.is_dir():
        return "no such folder"
    sigs = sorted(p.name for p in xps.iterdir() if p.is_dir())
    if not sigs:
        return "it holds no XP"
    count = f"{len(sigs)} XP{'s' * (len(sigs) != 1)}"
    if len(sigs) <= LISTED_XPS:
        return f"{count}: {', '.join(sigs)}"
    similar = _most_similar(near, sigs) if near is not None else []
    if similar:
        shown_sigs = f"{count}; the most similar: {', '.join(similar)}"
    else:
        shown_sigs = f"{count}{'; none similar' if near is not None else ''}: " \
                     f"{', '.join(sigs[:LISTED_XPS])}, ..."
    return f"{shown_sigs}; mode=list shows them all"


def _most_similar(near: str, sigs: list[str]) -> list[str]:
    """Up to LISTED_XPS of ``sigs`` at least SIMILAR_SIGNATURE alike to ``near`` (difflib's
    ratio), the most similar first, equally similar ones in name order."""
    ratios = {}
    for sig in sigs:
        matcher = difflib.SequenceMatcher(None, near, sig)
        if matcher.real_quick_ratio() >= SIMILAR_SIGNATURE \
                and matcher.quick_ratio() >= SIMILAR_SIGNATURE:
            ratios[sig] = matcher.ratio()
    ranked = sorted((-r, sig) for sig, r in ratios.items() if r >= SIMILAR_SIGNATURE)
    return [sig for _, sig in ranked[:LISTED_XPS]]


def _dora_dir_mistake(path: Path) -> str | None:
    """The command to use when ``path`` is a Dora dir or its xps/ folder, not an XP."""
    if path.name == "xps" and path.is_dir():
        dora_dir = path.parent
        hint = f"the xps/ folder of the Dora dir {dora_dir}"
    elif (path / "xps").is_dir():
        dora_dir = path
        hint = "a Dora dir (it holds xps/)"
    else:
        return None
    return (f"{path} is {hint}: use input=xp input.dora_dir={dora_dir} input.sig=SIG "
            f"({xps_summary(dora_dir)})")


def _resolve_path(path: str, epoch: int | None = None) -> CheckpointSource:
    """``input.path``: a checkpoint file or an XP folder; a Dora dir gets the right command."""
    mistake = _dora_dir_mistake(Path(path).expanduser())
    if mistake:
        raise ExportError(mistake)
    return resolve_checkpoint(path, epoch)


def resolve_input(spec: InputConfig) -> CheckpointSource:
    """The checkpoint an ``input`` option designates (``input=demo``: the app writes it)."""
    if isinstance(spec, WeightsInput):
        return resolve_weights(spec)
    if isinstance(spec, CheckpointInput):
        return _resolve_path(spec.path)
    if isinstance(spec, XPInput):
        if spec.path and spec.sig:
            raise ExportError("input=xp takes input.sig=SIG or input.path=XP_FOLDER, not both")
        if spec.path:
            return _resolve_path(spec.path, spec.epoch)
        if spec.sig:
            return resolve_signature(spec.sig, spec.dora_dir, spec.epoch)
        raise ExportError("input=xp needs input.sig=SIG (with input.dora_dir=DIR or "
                          "AUDIOCRAFT_DORA_DIR) or input.path=XP_FOLDER")
    raise TypeError(f"not a checkpoint input: {spec!r}")
