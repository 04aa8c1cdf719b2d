"""Validation without wasted work: what each cheap check proves, and what it leaves to the
load checks; audiocraft's loaders build without random init and leave nothing patched."""

import struct
import zipfile

import pytest
import torch

from audiocraft_ext import ExportError, export_release
from audiocraft_ext.config import StateChoice
from audiocraft_ext.untrusted.lazy_tensors import CastTensor
from audiocraft_ext.untrusted.safe_load import load_checkpoint
from audiocraft_ext.untrusted.states import select_state
from audiocraft_ext.untrusted.xp_config import xp_config
from audiocraft_ext.validation.compare import check_release_file
from audiocraft_ext.validation.lean_loading import lean_loading, no_init
from audiocraft_ext.writing.release_format import LM_FILE, release_package, save_package
from tests.support.helpers import torch_load


@pytest.fixture
def written_release(musicgen_ckpt, tmp_path):
    """A release file written from the checkpoint's best state (tensors still on disk)."""
    def write(cast: bool = False):
        pkg = load_checkpoint(musicgen_ckpt)
        _, state = select_state(pkg, StateChoice.best, source=str(musicgen_ckpt))
        if cast:
            state = {k: CastTensor([v], torch.float32) for k, v in state.items()}
        path = tmp_path / LM_FILE
        path.unlink(missing_ok=True)
        written = save_package(release_package(state, xp_config(pkg, "x")), path)
        return path, state, written
    return write


def _central_entry(path, record_suffix):
    """Offset of the central-directory entry of the record ending in ``record_suffix``."""
    data = path.read_bytes()
    offset = zipfile.ZipFile(path).start_dir
    while data[offset:offset + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46:offset + 46 + name_len].decode().endswith(record_suffix):
            return offset
        offset += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"no record {record_suffix}")


def _file_mapped_at(address: int) -> str | None:
    """The file mapped at ``address`` in this process, per /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) == 6 else None
    return None


@pytest.mark.parametrize("cast", [False, True], ids=["copied", "cast"])
def test_the_file_check_passes_on_what_was_written(written_release, cast):
    check_release_file(*written_release(cast))


@pytest.mark.parametrize("cast", [False, True], ids=["copied", "cast"])
def test_the_file_check_catches_a_directory_that_lies(written_release, cast):
    path, state, written = written_release(cast)
    entry = _central_entry(path, "data/0")
    data = bytearray(path.read_bytes())
    crc = struct.unpack_from("<I", data, entry + 16)[0]
    struct.pack_into("<I", data, entry + 16, crc ^ 1)
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"CRC-32 differs from the bytes written"):
        check_release_file(path, state, written)


def test_the_file_check_catches_a_file_of_another_size(written_release):
    path, state, written = written_release()
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match=r"holds \d+ bytes; \d+ were written"):
        check_release_file(path, state, written)


def test_bytes_changed_behind_the_directory_are_caught_by_the_load_check(
        musicgen_ckpt, tmp_path, monkeypatch):
    """The file check trusts the record bytes to their CRC; the loaders compare every value."""
    import audiocraft_ext.pipeline.write as write_step

    real_write = write_step._write_packages

    def write_then_flip_a_value(staging, packages):
        written = real_write(staging, packages)
        record = written[LM_FILE].records["state_dict/data/0"]
        with open(staging / LM_FILE, "r+b") as f:
            f.seek(record.offset)
            first = f.read(1)
            f.seek(record.offset)
            f.write(bytes([first[0] ^ 0x40]))
        return written

    monkeypatch.setattr(write_step, "_write_packages", write_then_flip_a_value)
    with pytest.raises(ExportError, match=r"^reloaded LM: 1 of \d+ tensors differ from the "
                                          r"source state, first "):
        export_release(musicgen_ckpt, tmp_path / "rel", validate="load")
    assert not (tmp_path / "rel").exists()


def test_no_init_leaves_weights_as_they_are_and_restores_torch():
    originals = (torch.nn.init.kaiming_uniform_, torch.nn.modules.activation.xavier_uniform_,
                 torch.load)
    with no_init():
        layer = torch.nn.Linear(4, 4)
        with torch.no_grad():
            layer.weight.fill_(3.0)
        layer.reset_parameters()
        attention = torch.nn.MultiheadAttention(4, 1)  # its init functions imported by name
    assert torch.all(layer.weight == 3.0)
    assert attention is not None
    assert (torch.nn.init.kaiming_uniform_, torch.nn.modules.activation.xavier_uniform_,
            torch.load) == originals
    torch.manual_seed(0)
    assert torch.nn.Linear(4, 4).weight.std() > 0  # initialised again


def test_lean_loading_maps_zip_files_and_initialises_models_built_otherwise(musicgen_ckpt,
                                                                           tmp_path):
    from audiocraft.models import builders

    original_builder = builders.get_lm_model
    with lean_loading():
        assert builders.get_lm_model is not original_builder
        pkg = torch.load(musicgen_ckpt, map_location="cpu", weights_only=False)
        # a random debug model (what //pretrained/debug_compression_model is) keeps its init
        debug = builders.get_debug_compression_model()
    assert builders.get_lm_model is original_builder
    weights = [p for p in debug.parameters() if p.dim() > 1]
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in weights)
    tensor = next(iter(pkg["best_state"]["model"].values()))
    assert _file_mapped_at(tensor.data_ptr()) == str(musicgen_ckpt)  # mapped, not read
    assert torch.equal(tensor, next(iter(torch_load(musicgen_ckpt)["best_state"]["model"]
                                         .values())))


def _mapped_rss(path) -> int:
    """Resident bytes of this process's maps of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:  # a mapping's first line
                inside = len(head) == 6 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def test_mapped_pages_are_given_back_once_copied_and_read_again_when_needed(tmp_path):
    from audiocraft_ext.validation.lean_loading import _MappedStorages

    path = tmp_path / "state_dict.bin"
    torch.save({"a": torch.arange(4 << 20, dtype=torch.float32), "b": torch.ones(3)}, path)
    mapped = _MappedStorages()
    with lean_loading():
        state = torch.load(path, map_location="cpu", weights_only=True)
    mapped.add(state)
    assert float(state["a"].sum()) > 0  # reads every page: 16 MiB resident
    assert _mapped_rss(path) >= 16 << 20
    for tensor in state.values():
        mapped.release(tensor)
    assert _mapped_rss(path) < 64 << 10  # at most the pages shared with neighbours
    assert torch.equal(state["a"], torch.arange(4 << 20, dtype=torch.float32))  # read again
    own = torch.arange(4 << 20, dtype=torch.float32)  # memory the loads did not map
    mapped.release(own)
    assert torch.equal(own, torch.arange(4 << 20, dtype=torch.float32))  # left alone
