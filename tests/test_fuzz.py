"""Damaged checkpoints: every mutation yields a validated release or a clean ExportError,
never another exception and never a partial release.

CI runs a few hundred derandomized cases; FUZZ_EXAMPLES=5000 make test PYTEST_ARGS="-k fuzz"
runs a bigger, random campaign.
"""

import io
import itertools
import os
import zipfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from audiocraft_ext import ExportError, NoCompression, ValidateConfig, export_release
from audiocraft_ext.untrusted.safe_load import load_checkpoint
from tests.support.helpers import assert_validated, member_span

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
_counter = itertools.count()


@pytest.fixture(scope="module")
def pristine(musicgen_ckpt):
    """The checkpoint's bytes and the (start, size) of the members an export reads."""
    data = musicgen_ckpt.read_bytes()
    keys = {t.storage.key for t in load_checkpoint(musicgen_ckpt)["best_state"]["model"].values()}
    members = ["data.pkl", "byteorder", *(f"data/{k}" for k in keys)]
    return data, {m: member_span(musicgen_ckpt, m) for m in members}


def _repacked(data: bytes, member: str, new: bytes) -> bytes:
    """The archive with ``member`` replaced by ``new`` and a valid CRC: damage the zip check
    cannot see, which only the unpickler can refuse."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = new if info.filename.endswith("/" + member) else src.read(info)
            dst.writestr(info.filename, body)
    return out.getvalue()


@st.composite
def damaged(draw, pristine):
    data, spans = pristine
    kind = draw(st.sampled_from(["flip", "truncate", "member", "pickle"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    buf = bytearray(data)
    if kind == "pickle":
        start, size = spans["data.pkl"]
        pkl = bytearray(data[start:start + size])
        for _ in range(draw(st.integers(1, 4))):
            pkl[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
        return _repacked(data, "data.pkl", bytes(pkl))
    if kind == "member":
        start, size = spans[draw(st.sampled_from(sorted(spans)))]
        lo, hi = start, start + size - 1
    else:
        lo, hi = 0, len(data) - 1
    for _ in range(draw(st.integers(1, 8))):
        buf[draw(st.integers(lo, hi))] ^= draw(st.integers(1, 255))
    return bytes(buf)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.slow  # a fuzzing campaign: 300 damaged checkpoints, each exported
@settings(max_examples=EXAMPLES, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_checkpoint_never_leaves_a_partial_release(pristine, workdir, data):
    case = workdir / str(next(_counter))
    case.mkdir()
    path = case / "checkpoint.th"
    path.write_bytes(data.draw(damaged(pristine)))
    dest = case / "out" / "release"
    try:
        result = export_release(path, dest, compression=NoCompression(),
                                validate=ValidateConfig(level="load"))
    except ExportError as exc:
        event(f"rejected: {str(exc).split(': ', 1)[-1][:40]}")
        assert "\n" not in str(exc)
        assert not dest.exists()
    else:
        event("exported")
        assert_validated(result.manifest, ["lm_file", "load_lm_model"])
        written = {p.name for p in dest.iterdir()}
        # the training curves exist when the (damaged) history still holds numbers
        assert written - {"training_curves.png"} == {"README.md", "export.json", "state_dict.bin"}
    leftovers = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
    assert leftovers in ([], ["release"])
