"""Runs fuzz cases, each in a forked child, and reports how each ended.

Started once by the structure-aware fuzz test, as ``python -m tests.support.fuzz_worker``
from the project folder (importing torch and audiocraft costs seconds, a fork milliseconds).
Reads one JSON request per line on stdin ({"checkpoint", "dest", "validate", "fill"}), writes
one JSON result per line on stdout: how the child ended ("exit" with its code, "signal" with
its number, or "timeout") and what it said. Child exit codes: 0 a release was published and
checked, 1 a clean one-line ExportError and nothing published; anything else is a finding
(see ``_run_case``).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# The thread count must be set before torch is imported: the imports below come after it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import audiocraft.models  # noqa: F401 - imported once, before forking
import torch

from audiocraft_ext import (
    ExportError,
    NoCompression,
    ValidateConfig,
    export_release,
)
from audiocraft_ext.app.inspection import (
    format_inspection,
    inspect_checkpoint,
)
from audiocraft_ext.untrusted.sources import resolve_checkpoint

TIMEOUT_S = 20.0
FINDINGS = {2: "traceback", 3: "published release does not load", 4: "error left files",
            5: "error message is not one short printable line",
            6: "published bytes that are not the source's"}


def _run_case(checkpoint: Path, dest: Path, validate: str, fill: int) -> tuple[int, str]:
    try:
        info = inspect_checkpoint(resolve_checkpoint(checkpoint))
        format_inspection(info)
        json.dumps(info)
        export_release(checkpoint, dest, validate=ValidateConfig(level=validate),
                       compression=NoCompression())
    except ExportError as exc:
        message = str(exc)
        if "\n" in message or len(message) > 1000 or not message.isprintable():
            return 5, message
        if os.path.lexists(dest) or (dest.parent.exists() and any(dest.parent.iterdir())):
            return 4, f"{message} / left: {sorted(p.name for p in dest.parent.iterdir())}"
        return 1, message
    except BaseException:  # noqa: BLE001 - anything else is what the fuzzer looks for
        return 2, traceback.format_exc()
    try:
        state = torch.load(dest / "state_dict.bin", map_location="cpu",
                           weights_only=True)["best_state"]
    except Exception:  # noqa: BLE001 - a published release that fails to load is a finding
        return 3, traceback.format_exc()
    for key, tensor in state.items():
        data = bytes(tensor.untyped_storage())
        if data.strip(bytes([fill])):
            return 6, f"{key}: {data[:64]!r}"
    return 0, ""


def _child(request: dict, pipe: int) -> None:
    case = Path(request["checkpoint"]).parent
    err = os.open(case / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    faulthandler.enable()
    code, text = _run_case(Path(request["checkpoint"]), Path(request["dest"]),
                           request["validate"], request["fill"])
    os.write(pipe, json.dumps({"code": code, "text": text[-4000:]}).encode())
    os._exit(0)


def _run(request: dict) -> dict:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(request, write)
    os.close(write)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return {"end": "timeout"}
        time.sleep(0.002)
    with os.fdopen(read, "rb") as f:
        said = f.read()
    if os.WIFSIGNALED(status):
        stderr = Path(request["checkpoint"]).parent / "stderr.txt"
        return {"end": "signal", "signal": os.WTERMSIG(status),
                "text": stderr.read_text(errors="replace")[-4000:]}
    result = json.loads(said) if said else {"code": -1, "text": "the child said nothing"}
    return {"end": "exit", **result}


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
