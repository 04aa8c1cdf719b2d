"""Our torch zip writer: the layout torch.save writes, read by torch.load on this stack."""

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from audiocraft_ext.writing.torch_writer import save_streaming
from audiocraft_ext.writing.torch_zip import ALIGNMENT
from tests.support.helpers import assert_same_state

MODERN = hasattr(torch.serialization, "_get_storage_alignment")  # torch writes the same records


def _state() -> dict:
    torch.manual_seed(0)
    return {"best_state": {"w": torch.randn(7, 5), "h": torch.randn(3).half(),
                           "i": torch.arange(4), "b": torch.tensor([True, False]),
                           "empty": torch.zeros(0)},
            "xp.cfg": "a: 1\n", "version": "1.3.0", "exported": True}


def _records(path: Path) -> list[tuple[str, int, bytes]]:
    """(name, data offset, bytes) of each record, in file order."""
    with zipfile.ZipFile(path) as zf:
        data = path.read_bytes()
        out = []
        for info in zf.infolist():
            name_len, extra_len = int.from_bytes(data[info.header_offset + 26:][:2], "little"), \
                int.from_bytes(data[info.header_offset + 28:][:2], "little")
            start = info.header_offset + 30 + name_len + extra_len
            out.append((info.filename, start, zf.read(info)))
        return out


@pytest.mark.skipif(not MODERN, reason="torch 2.1's writer writes fewer records")
def test_same_bytes_as_torch_save_up_to_its_serialization_id(tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = tmp_path / "ours" / "state_dict.bin", tmp_path / "theirs" / "state_dict.bin"
    written = save_streaming(_state(), ours)
    torch.save(_state(), theirs)
    # torch adds a .data/serialization_id record (a hash of the others) after `version`
    assert [r for r in _records(theirs) if not r[0].endswith("serialization_id")] \
        == _records(ours)
    end_of_version = _records(ours)[-1][1] + 2 + 16  # "3\n" and its data descriptor
    assert ours.read_bytes()[:end_of_version] == theirs.read_bytes()[:end_of_version]
    assert written.size == ours.stat().st_size
    assert written.sha256 == hashlib.sha256(ours.read_bytes()).hexdigest()


def test_torch_load_reads_it_plain_and_mapped_with_aligned_records(tmp_path):
    path = tmp_path / "state_dict.bin"
    written = save_streaming(_state(), path)
    for mmap in (False, True):
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        assert_same_state(loaded["best_state"], _state()["best_state"])
        assert {k: v for k, v in loaded.items() if k != "best_state"} == \
            {k: v for k, v in _state().items() if k != "best_state"}
    for name, start, _ in _records(path):
        assert start % ALIGNMENT == 0, name
        assert written.records[name].offset == start
        assert written.records[name].crc == zipfile.ZipFile(path).getinfo(name).CRC


@pytest.mark.slow  # writes and maps a 4.3 GB file
def test_offsets_and_sizes_past_4_gib_use_zip64(tmp_path):
    """A float32 MusicGen-medium release is 7 GB: zip64 fields in the records past 4 GiB,
    where torch's own offset prediction (calculate_storage_offsets) must agree."""
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    if free < (12 << 30):
        pytest.skip(f"needs 12 GB of free disk, {free >> 30} GB free")
    path = tmp_path / "big.bin"
    big = {"a": torch.full(((1 << 32) // 4 + 1000,), 1.5), "b": torch.arange(10.0),
           "c": torch.full((5,), 2.0, dtype=torch.float16)}  # a past 4 GiB, b and c after it
    save_streaming(big, path)
    del big
    check = ("import sys, torch\n"
             "if hasattr(torch, 'utils') and hasattr(torch.utils, 'serialization'):\n"
             "    torch.utils.serialization.config.load.calculate_storage_offsets = True\n"
             "x = torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)\n"
             "assert x['a'].numel() == (1 << 32) // 4 + 1000 and x['a'][-1] == 1.5\n"
             "assert torch.equal(x['b'], torch.arange(10.0)) and x['c'].tolist() == [2.0] * 5\n"
             "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", check, str(path)], capture_output=True,
                          text=True, env={**os.environ, "TORCH_SERIALIZATION_DEBUG": "1"})
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC as recorded
