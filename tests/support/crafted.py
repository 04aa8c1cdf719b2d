"""Checkpoints crafted at the pickle-opcode level, as an attacker writes them.

A real checkpoint is saved with ``MARKER`` at one place (a state value, a state key, the
history, the config); the marker's opcode in ``data.pkl`` is then replaced by a program of
raw pickle opcodes that pushes one object. The rest of the file (every storage record, the
config, the optimizer) stays as torch.save wrote it, so the program reaches the code that a
real checkpoint reaches.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MARKER = "__crafted_payload__"
# memo slots for programs: far above the few thousand a small checkpoint uses
_MEMO_BASE = 1 << 20


# --- a small pickle assembler --------------------------------------------------------------
def text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def raw_bytes(value: bytes) -> bytes:
    """A bytes object (SHORT_BINBYTES/BINBYTES are protocol 3; C unpicklers accept them)."""
    return b"B" + struct.pack("<I", len(value)) + value


def integer(value: int) -> bytes:
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def floating(value: float) -> bytes:
    return b"G" + struct.pack(">d", value)


NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def glob(module: str, name: str) -> bytes:
    """GLOBAL: module and name are lines, so they cannot hold a newline."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL: module and name are strings, so they can hold anything."""
    return text(module) + text(name) + b"\x93"


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def lst(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"(" + b"".join(k + v for k, v in pairs) + b"d"


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def build(obj: bytes, state: bytes) -> bytes:
    return obj + state + b"b"


def newobj(cls: bytes, *args: bytes) -> bytes:
    return cls + tup(*args) + b"\x81"


def put(slot: int) -> bytes:
    return b"r" + struct.pack("<I", _MEMO_BASE + slot)


def get(slot: int) -> bytes:
    return b"j" + struct.pack("<I", _MEMO_BASE + slot)


def storage(key: str, numel: int, storage_type: str = "HalfStorage",
            module: str = "torch") -> bytes:
    """A persistent reference to record data/<key>, as torch.save writes one."""
    return tup(text("storage"), glob(module, storage_type), text(key), text("cpu"),
               integer(numel)) + b"Q"


def tensor_v2(storage_ref: bytes, offset: int, size: tuple, stride: tuple) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage_ref, integer(offset),
                tup(*map(integer, size)), tup(*map(integer, stride)), FALSE,
                call(glob("collections", "OrderedDict")))


# --- where a program goes in a real checkpoint ------------------------------------------------
def in_history(pkg: dict[str, Any], marker: str) -> None:
    pkg["history"] = [{"train": {"ce": 1.0, "note": marker}}]


def as_state_value(pkg: dict[str, Any], marker: str) -> None:
    pkg["best_state"]["model"]["out_norm.weight"] = marker


def as_state_key(pkg: dict[str, Any], marker: str) -> None:
    state = pkg["best_state"]["model"]
    state[marker] = state.pop("out_norm.weight")


def as_state(pkg: dict[str, Any], marker: str) -> None:
    pkg["best_state"]["model"] = marker


def as_config(pkg: dict[str, Any], marker: str) -> None:
    pkg["xp.cfg"] = marker


def in_optimizer(pkg: dict[str, Any], marker: str) -> None:
    pkg["optimizer"] = {"state": {0: {"exp_avg": marker}}, "param_groups": []}


PLACES = {f.__name__: f for f in (in_history, as_state_value, as_state_key, as_config,
                                  in_optimizer)}


# --- splicing a program into a real checkpoint ------------------------------------------------
def save_with_marker(pkg: dict[str, Any], place: Callable[[dict[str, Any], str], None]) -> bytes:
    """torch.save bytes of ``pkg`` after ``place(pkg, MARKER)`` put the marker somewhere."""
    place(pkg, MARKER)
    buf = io.BytesIO()
    torch.save(pkg, buf)
    return buf.getvalue()


def splice(archive: bytes, program: bytes, fill: int | None = None,
           extra: dict[str, bytes] | None = None) -> bytes:
    """``archive`` (torch.save bytes holding MARKER once) with the marker's opcode replaced by
    ``program``; every other record is copied unchanged, or, with ``fill``, storage records
    are filled with that byte (so that any other byte in an output came from elsewhere).
    ``extra`` adds storage records (key -> bytes) for the program to reference."""
    out = io.BytesIO()
    marker_op = text(MARKER)
    with zipfile.ZipFile(io.BytesIO(archive)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                if data.count(marker_op) != 1:
                    raise ValueError("the marker must appear exactly once")
                data = data.replace(marker_op, program)
            elif fill is not None and "/data/" in info.filename:
                data = bytes([fill]) * len(data)
            dst.writestr(info.filename, data)
        prefix = src.namelist()[0].split("/", 1)[0]
        for key, data in (extra or {}).items():
            dst.writestr(f"{prefix}/data/{key}", data)
    return out.getvalue()


def storage_keys(archive: bytes) -> dict[str, int]:
    """Record key -> byte size of every storage record of ``archive``."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {i.filename.rsplit("/", 1)[1]: i.file_size for i in zf.infolist()
                if "/data/" in i.filename}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
