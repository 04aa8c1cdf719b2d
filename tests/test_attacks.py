"""The safety promises under attack and under a hurried user's mistakes.

Each case runs the app's job on a checkpoint crafted as an attacker writes one (raw pickle
opcodes spliced into a real checkpoint, see ``crafted``) or on a destination a user could
plausibly type, and requires one readable refusal (or, for legitimate input, a correct
release), the source and the destination untouched.

The rules are checked in process (the ``refused`` fixture). One case of each family
(``through_app``, in `make test`) runs the real app in a fresh process instead, for exit
status 1, one [ERROR] line and no traceback; so do the defences against exhausting the
process (deep nesting, views that repeat their storage, devices and FIFOs as input): were one
to fail, it would crash or block the process reading the file, which must not be pytest's.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audiocraft_ext import ExportError, NoCompression, ValidateConfig, export_release
from audiocraft_ext.app.job import run
from audiocraft_ext.untrusted.safe_load import load_checkpoint
from tests.support import crafted as c
from tests.support.app_cases import checkpoint_copy, exported_in_process, input_args
from tests.support.helpers import (
    LOAD_CHECKS,
    app_env,
    assert_same_state,
    assert_validated,
    error_lines,
    release_state,
    run_app,
    sha256_of,
    torch_load,
)

NONE = ValidateConfig(level="none")
THROUGH_APP = pytest.mark.through_app  # and slow: an app process costs about two seconds


def _crafted(tmp_path: Path, source: Path, place, program: bytes, **splice) -> Path:
    """``source`` re-saved with ``program`` where ``place(pkg, marker)`` put the marker, as
    <tmp>/dora/xps/<sig>/checkpoint.th beside its compression model XP."""
    path = checkpoint_copy(tmp_path, source)
    return c.write(path, c.splice(c.save_with_marker(torch_load(source), place), program,
                                  **splice))


def _first_storage(source: Path) -> tuple[str, int]:
    """(key, elements) of the storage behind out_norm.weight (float16) in ``source``."""
    tensor = load_checkpoint(source)["best_state"]["model"]["out_norm.weight"]
    return tensor.storage.key, tensor.storage.numel


# --- the allow-list admits only what cannot hurt ------------------------------------------
_F8_STATE = c.tup(c.integer(3), c.text("<"), c.NONE, c.NONE, c.NONE, c.integer(-1),
                  c.integer(-1), c.integer(0))


def _np_dtype(code: str, state: bytes = _F8_STATE) -> bytes:
    return c.build(c.call(c.glob("numpy", "dtype"), c.text(code), c.FALSE, c.TRUE), state)


_VOID_WITH_OBJECT_FIELD = c.tup(
    c.integer(3), c.text("|"), c.NONE, c.tup(c.text("f")),
    c.dct((c.text("f"), c.tup(_np_dtype("f8"), c.integer(0)))),
    c.integer(8), c.integer(1), c.integer(0x3f))

PROGRAMS = {
    # numpy: a void dtype whose state forges an object field, then a scalar of it
    "numpy-void-dtype": (c.call(c.glob("numpy.core.multiarray", "scalar"),
                                _np_dtype("V8", _VOID_WITH_OBJECT_FIELD), c.raw_bytes(b"A" * 8)),
                         r"numpy.dtype\('V8'\): only plain numeric dtypes are allowed$"),
    "numpy-forged-state": (c.call(c.glob("numpy.core.multiarray", "scalar"),
                                  _np_dtype("f8", _VOID_WITH_OBJECT_FIELD), c.raw_bytes(b"A" * 8)),
                           r"numpy dtype 'f8': its pickled state is not that of a plain numeric "
                           r"dtype$"),
    "numpy-scalar-bytes": (c.call(c.glob("numpy._core.multiarray", "scalar"), _np_dtype("f8"),
                                  c.raw_bytes(b"A" * 200)),
                           r"numpy scalar of dtype 'f8' with 200 bytes$"),
    # an unhashable dtype code: once a raw TypeError from our own membership test
    "numpy-unhashable-dtype": (c.call(c.glob("numpy", "dtype"), c.lst(c.integer(1))),
                               r"numpy.dtype\(\[1\]\): only plain numeric dtypes are allowed$"),
    "torch.Tensor(n)": (c.call(c.glob("torch", "Tensor"), c.integer(1 << 26)),
                        r"refusing to load .*: torch.Tensor called with \(int\)$"),
    "Tensor-as-rebuild": (c.call(c.glob("torch._tensor", "_rebuild_from_type_v2"),
                                 c.glob("torch", "Tensor"), c.glob("torch", "Tensor"),
                                 c.tup(c.integer(1 << 26)), c.NONE),
                          r"torch._tensor._rebuild_from_type_v2 called with \(TypeToken, "
                          r"TypeToken, tuple\)$"),
    "Tensor-newobj": (c.newobj(c.glob("torch", "Tensor"), c.integer(1 << 26)),
                      r"is not a readable torch checkpoint: NEWOBJ class argument "),
    "dict-resolving-a-config": (
        c.call(c.glob("builtins", "dict"),
               c.build(c.newobj(c.glob("omegaconf.dictconfig", "DictConfig")),
                       c.dct((c.text("_content"),
                              c.dct((c.text("k"), c.text("${oc.env:SECRET}"))))))),
        r"builtins.dict called with \(DictConfig\)$"),
    "config-built-by-call": (c.call(c.glob("omegaconf.dictconfig", "DictConfig"),
                                    c.dct((c.text("k"), c.text("v")))),
                             r"omegaconf DictConfig called with \(dict\)$"),
    "codecs-other-encoding": (c.call(c.glob("_codecs", "encode"), c.text("eJw="),
                                     c.text("base64")),
                              r"_codecs.encode called with \(str, str\)$"),
}


@pytest.mark.parametrize("name, mode", [
    pytest.param(name, mode, id=f"{name}-{mode}",
                 marks=[THROUGH_APP, pytest.mark.slow] if (name, mode) == (min(PROGRAMS), "export")
                 else [])
    for mode in ("export", "inspect") for name in sorted(PROGRAMS)])
def test_forging_programs_are_refused(tmp_path, refused, musicgen_ckpt, name, mode):
    program, message = PROGRAMS[name]
    place = c.as_state_value if name.startswith("torch") or "Tensor" in name else c.in_history
    path = _crafted(tmp_path, musicgen_ckpt, place, program)
    refused(tmp_path, *input_args(path), f"mode={mode}", message=message,
            setenv={"SECRET": "hunter2"})


def test_a_trusted_file_naming_a_missing_module_is_one_line(tmp_path, refused, musicgen_ckpt):
    """With trust, find_class imports what the file names: a module this machine lacks is the
    file's problem, said in one line, not a traceback."""
    program = c.call(c.glob("no_such_module_here", "Thing"), c.integer(1))
    path = _crafted(tmp_path, musicgen_ckpt, c.in_history, program)
    refused(tmp_path, *input_args(path), "input.trust=true",
            message=r"is not a readable torch checkpoint: no_such_module_here.Thing: No module "
                    r"named 'no_such_module_here'$")


def test_a_config_node_without_a_value(tmp_path, refused, musicgen_ckpt):
    """Found by the byte-mutation fuzzer: a config node whose state lost its value."""
    node = c.build(c.newobj(c.glob("omegaconf.nodes", "AnyNode")),
                   c.dct((c.text("_metadata"), c.NONE)))
    cfg = c.build(c.newobj(c.glob("omegaconf.dictconfig", "DictConfig")),
                  c.dct((c.text("_content"), c.dct((c.text("solver"), node)))))
    path = _crafted(tmp_path, musicgen_ckpt, c.as_config, cfg)
    refused(tmp_path, *input_args(path),
            message=r"checkpoint.th: its xp.cfg is damaged \(a AnyNode without a value\)$")


@pytest.mark.slow  # two app processes: a regression would overflow the C stack of the reader
@THROUGH_APP
def test_deep_nesting_is_refused_before_it_is_built(tmp_path, refused, musicgen_ckpt):
    """A 300,000-deep tuple as a state key: the C unpickler would hash it by recursion."""
    path = _crafted(tmp_path, musicgen_ckpt, c.as_state_key,
                    c.integer(0) + b"\x85" * 300_000)  # TUPLE1, over and over
    for mode in ("export", "inspect"):
        refused(tmp_path, *input_args(path), f"mode={mode}",
                message=r"is not a readable torch checkpoint: objects nested more than 200 "
                        r"levels deep$")


def test_memory_bombs_are_refused_before_anything_is_built(tmp_path, musicgen_ckpt):
    """A 1 kB file must not cost gigabytes: a memo slot at 2^31 (the C unpickler sizes and
    clears its memo up to the largest index), a compressed record inflating past the file."""
    path = _crafted(tmp_path, musicgen_ckpt, c.in_history,
                    c.integer(1) + b"r" + (2**31 - 1).to_bytes(4, "little"))  # LONG_BINPUT
    with pytest.raises(ExportError, match=r"is not a readable torch checkpoint: memo index "
                                          r"2147483647 in a pickle of \d+ bytes$"):
        load_checkpoint(path)
    zipped = tmp_path / "rezipped.th"
    with zipfile.ZipFile(musicgen_ckpt) as src, \
            zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ExportError, match=r"rezipped.th: its record 'byteorder' is compressed; "
                                          r"torch checkpoints store records uncompressed"):
        load_checkpoint(zipped)


def test_lists_nested_through_the_memo_are_inspected(tmp_path, job_config, capsys,
                                                     musicgen_ckpt):
    """5,000 lists, each appended into the previous one after all were built: the opcode scan
    sees depth 1, inspection must still not recurse past its bound."""
    n = 5000
    put = [b"r" + (100_000 + i).to_bytes(4, "little") for i in range(n)]  # LONG_BINPUT
    get = [b"j" + (100_000 + i).to_bytes(4, "little") for i in range(n)]  # LONG_BINGET
    program = b"".join(c.lst() + put[i] + b"0" for i in range(n))  # build, memoize, pop
    program += b"".join(get[i] + get[i + 1] + b"a0" for i in range(n - 1)) + get[0]
    path = _crafted(tmp_path, musicgen_ckpt, c.in_history, program)
    assert run(job_config("mode=inspect", *input_args(path))) is None  # no exception
    assert capsys.readouterr().out.startswith("checkpoint ")


@pytest.mark.parametrize("view, message", [
    pytest.param("past-the-end", r"reaches element \d+ of a storage of \d+ elements \(size, "
                                 r"stride or offset outside the storage\)$",
                 marks=[THROUGH_APP, pytest.mark.slow]),
    ("offset", r"reaches element \d+ of a storage"),
    ("stride-0-giant", r"repeats the \d+ elements of its storage as 1099511627776 \(a stride-0 "
                       r"or overlapping view\)$"),
    ("wrong-record-size", r"storage '\w+' of \d+ bytes has a record of \d+ bytes$"),
    ("size-of-strings", r"a tensor's size is not a list of at most 64 non-negative ints$"),
    ("negative-stride", r"a tensor's stride is not a list of at most 64 non-negative ints$"),
    ("numel-not-an-int", r"a storage reference with a malformed type, key, location or size$"),
    ("storage-type-not-a-storage", r"a storage reference with a malformed type"),
])
def test_tensor_views_outside_their_storage_are_refused(tmp_path, refused, musicgen_ckpt, view,
                                                        message):
    """Refused while reading, so nothing is published even with validate=none."""
    key, numel = _first_storage(musicgen_ckpt)
    ref = c.storage(key, numel)
    program = {
        "past-the-end": c.tensor_v2(ref, 0, (numel + 1,), (1,)),
        "offset": c.tensor_v2(ref, numel, (1,), (1,)),
        "stride-0-giant": c.tensor_v2(ref, 0, (1 << 40,), (0,)),
        "wrong-record-size": c.tensor_v2(c.storage(key, numel + 8), 0, (numel,), (1,)),
        "size-of-strings": c.call(c.glob("torch._utils", "_rebuild_tensor_v2"), ref,
                                  c.integer(0), c.tup(c.text("3")), c.tup(c.integer(1)), c.FALSE,
                                  c.NONE),
        "negative-stride": c.tensor_v2(ref, numel - 1, (numel,), (-1,)),
        "numel-not-an-int": c.tensor_v2(c.tup(c.text("storage"), c.glob("torch", "HalfStorage"),
                                              c.text(key), c.text("cpu"), c.text("12")) + b"Q",
                                        0, (1,), (1,)),
        "storage-type-not-a-storage": c.tensor_v2(
            c.storage(key, numel, "int", module="builtins"), 0, (1,), (1,)),
    }[view]
    path = _crafted(tmp_path, musicgen_ckpt, c.as_state_value, program)
    refused(tmp_path, *input_args(path), "validate=none", message=message)


@pytest.mark.parametrize("target", [pytest.param("view", marks=[THROUGH_APP, pytest.mark.slow]),
                                    "storage", "function", "class", "type-token"])
def test_build_cannot_change_what_the_reader_checked(tmp_path, refused, musicgen_ckpt, target):
    """BUILD sets attributes: on a checked view it would make it a stride-0 giant, on an
    allowed function or class it would change it for every later load in the process."""
    key, numel = _first_storage(musicgen_ckpt)
    view = c.tensor_v2(c.storage(key, numel), 0, (numel,), (1,))
    giant = c.dct((c.text("size"), c.tup(c.integer(1 << 40))),
                  (c.text("stride"), c.tup(c.integer(0))))
    program = {
        "view": c.build(view, giant),
        "storage": c.tensor_v2(c.build(c.storage(key, numel), c.dct((c.text("numel"),
                                                                    c.integer(1 << 40)))),
                               0, (numel,), (1,)),
        # (None, slots) state: setattr, as pickle does it when there is no __setstate__
        "function": c.build(c.glob("torch", "Size"),
                            c.tup(c.NONE, c.dct((c.text("func"), c.glob("builtins", "list"))))),
        "class": c.build(c.glob("omegaconf.dictconfig", "DictConfig"),
                         c.tup(c.NONE, c.dct((c.text("kind"), c.text("x"))))),
        "type-token": c.build(c.glob("torch", "Tensor"),
                              c.tup(c.NONE, c.dct((c.text("qualname"), c.text("x"))))),
    }[target]
    place = c.as_state_value if target in ("view", "storage") else c.in_history
    path = _crafted(tmp_path, musicgen_ckpt, place, program)
    message = {"view": "BUILD on a StoredTensor, which takes no state",
               "storage": "BUILD on a StoredStorage, which takes no state",
               "function": "BUILD on torch.Size, which takes no state",
               "class": r"PickledConfig.__setstate__\(\) missing 1 required positional argument",
               "type-token": "BUILD on torch.Tensor, which takes no state"}[target]
    refused(tmp_path, *input_args(path), "validate=load", message=message)


@pytest.mark.slow  # an app process: a regression would read 6.7 GB
@THROUGH_APP
def test_many_repeating_views_of_one_storage(tmp_path, refused, musicgen_ckpt):
    """Each view within the per-view bound, together 6.7 GB read from 64 bytes."""
    many = c.dct(*((c.text(f"w{i}"), c.tensor_v2(c.storage("9999", 32), 0, (1 << 24,), (0,)))
                   for i in range(200)))
    path = _crafted(tmp_path, musicgen_ckpt, c.as_state, many, extra={"9999": bytes(64)})
    refused(tmp_path, *input_args(path), "validate=load",
            message=r"checkpoint.th: the tensors of 'best_state' stand for 6710886400 bytes but "
                    r"their storages hold 64: views that repeat their storages; refusing$")


@pytest.mark.slow  # an app process: its whole stderr
def test_injected_names_stay_on_one_short_line(tmp_path, refused, musicgen_ckpt):
    """The forged line in process; the 200,000-character name through the app, whose whole
    stderr must stay short."""
    forged = "\n[2026-01-01 00:00:00,000][export_app][ERROR] - forged"
    path = _crafted(tmp_path, musicgen_ckpt, c.in_history, c.stack_global(f"os{forged}", "system"))
    refused(tmp_path, *input_args(path),
            message=r"it references os\\n\[2026-01-01 00:00:00,000\]\[export_app\]\[ERROR\] - "
                    r"forged.system, which is not allowed")
    path = _crafted(tmp_path / "long", musicgen_ckpt, c.in_history,
                    c.stack_global("m" * 200_000, "f"))
    proc = run_app(*input_args(path), f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert "mmmmm..., which is not allowed" in line and len(line) < 1100
    assert len(proc.stderr) < 10_000


# --- legitimate files are read ---------------------------------------------------------------
_V3_DTYPES = [d for d in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64",
                          "complex32") if hasattr(torch, d)]
_HAS_V3 = hasattr(torch._utils, "_rebuild_tensor_v3")


def test_v3_tensors_in_the_optimizer_are_read_on_every_torch(tmp_path, musicgen_ckpt):
    """A checkpoint saved by newer torch with float8 optimizer state (written here as the
    opcodes torch writes, since torch 2.1 cannot save float8): read, skipped, exported."""
    program = c.call(c.glob("torch._utils", "_rebuild_tensor_v3"),
                     c.storage("9999", 16, "UntypedStorage", module="torch.storage"),
                     c.integer(0), c.tup(c.integer(4), c.integer(4)),
                     c.tup(c.integer(4), c.integer(1)), c.FALSE,
                     c.call(c.glob("collections", "OrderedDict")),
                     c.glob("torch", "float8_e4m3fn"))
    path = _crafted(tmp_path, musicgen_ckpt,
                    lambda pkg, m: pkg["optimizer"]["state"][0].update(exp_avg_f8=m), program,
                    extra={"9999": bytes(range(16))})
    assert load_checkpoint(path)["optimizer"]["state"][0]["exp_avg_f8"].dtype == \
        torch.float8_e4m3fn
    result = export_release(path, tmp_path / "rel", validate=ValidateConfig(level="load"))
    assert result.manifest.state.key == "best_state"


@pytest.mark.skipif(not _HAS_V3, reason="this torch can neither save nor load v3 tensors")
def test_dtypes_saved_with_rebuild_v3_are_read_and_exported(tmp_path, musicgen_ckpt):
    """torch saves float8, uint16/32/64 and complex32 with _rebuild_tensor_v3 (untyped
    storages): in the optimizer they are skipped, in a state they are exported bit for bit."""
    def edit(pkg):
        extra = {d: torch.arange(6, dtype=torch.float32).to(getattr(torch, d))
                 for d in _V3_DTYPES}
        pkg["optimizer"]["state"][0].update(extra)
        pkg["best_state"]["model"].update({f"extra.{d}": t for d, t in extra.items()})

    path = checkpoint_copy(tmp_path, musicgen_ckpt, edit)
    result = export_release(path, tmp_path / "rel", validate=NONE, compression=NoCompression())
    assert_same_state(release_state(result.release_dir / "state_dict.bin"),
                      torch_load(path)["best_state"]["model"])


def test_nan_in_a_state_validates(tmp_path, musicgen_ckpt):
    def edit(pkg):
        pkg["best_state"]["model"]["out_norm.weight"][0] = float("nan")

    path = checkpoint_copy(tmp_path, musicgen_ckpt, edit)
    result = export_release(path, tmp_path / "rel", validate=ValidateConfig(level="load"))
    assert_validated(result.manifest, LOAD_CHECKS)
    assert_same_state(release_state(result.release_dir / "state_dict.bin"),
                      torch_load(path)["best_state"]["model"])  # the NaN too, bit for bit


# --- the destination can never destroy user data ------------------------------------------
@pytest.fixture(scope="module")
def a_release(musicgen_ckpt, tmp_path_factory) -> Path:
    """A release of the MusicGen XP (validate=none), exported once: tests copy it."""
    out = tmp_path_factory.mktemp("a-release") / "release"
    export_release(musicgen_ckpt, out, validate=NONE)
    return out


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (but the app's run dir) and what it is: a file's sha256, a
    link's target, or a folder."""
    def what(p: Path) -> str:
        return (f"-> {os.readlink(p)}" if p.is_symlink() else sha256_of(p) if p.is_file()
                else "folder")
    return {str(p.relative_to(root)): what(p) for p in root.rglob("*")
            if p.relative_to(root).parts[0] != "run"}


@pytest.mark.parametrize("where, message", [
    pytest.param("xp-folder", r"/dora/xps/\w+ is /.*/dora/xps/\w+, which holds the checkpoint "
                              r"being exported; a release is never written there",
                 marks=[THROUGH_APP, pytest.mark.slow]),
    ("xps", r"/dora/xps contains .*, which holds the checkpoint being exported"),
    ("dora-dir", r"/dora contains .*, which holds the checkpoint being exported"),
    ("inside-xp", r"lies inside .*, which holds the checkpoint"),
    ("checkpoint-file", r"checkpoint.th exists and is not a folder; choose another output.dir$"),
    ("cwd", r"is the current folder or one above it; it is never replaced"),
    ("parent-of-cwd", r"is the current folder or one above it; it is never replaced"),
    ("not-a-release", r"exists and is not a release folder \(it holds 'notes.txt', which is not "
                      r"a release file\); it is never replaced"),
    ("empty-folder", r"exists and is not a release folder \(it is empty\)"),
    ("symlink", r"is a symbolic link; a release is never written through one"),
    ("dangling-symlink", r"is a symbolic link; a release is never written through one"),
])
def test_overwrite_never_replaces_user_data(tmp_path, refused, a_release, musicgen_ckpt, where,
                                            message):
    """Export with output.overwrite=true to ``where``, from a current folder of the test's,
    beside a release: refused, nothing changed."""
    source = checkpoint_copy(tmp_path, musicgen_ckpt)
    xp = source.parent
    work = tmp_path / "work" / "sub"  # the current folder
    work.mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    release = tmp_path / "release"
    shutil.copytree(a_release, release)
    (xp / "inner").mkdir()
    (xp / "inner" / "export.json").write_text("{\"files\": {}}")
    dest = {"xp-folder": xp, "xps": xp.parent, "dora-dir": xp.parent.parent,
            "inside-xp": xp / "inner", "checkpoint-file": source, "cwd": Path("."),
            "parent-of-cwd": Path(".."), "not-a-release": mine,
            "empty-folder": tmp_path / "empty", "symlink": tmp_path / "link",
            "dangling-symlink": tmp_path / "dangling"}[where]
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(release)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = _snapshot(tmp_path)
    refused(tmp_path, *input_args(source), "output.overwrite=true", "validate=none", dest=dest,
            cwd=work, message=message)
    assert _snapshot(tmp_path) == before
    assert (mine / "notes.txt").read_text() == "mine"


def test_symlinked_lock_is_never_followed(tmp_path, refused, musicgen_ckpt):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".release.lock").symlink_to(victim)
    refused(tmp_path, *input_args(musicgen_ckpt), keep=(".release.lock",),
            message=r"/out/.release.lock is a symbolic link; a lock file is never followed: "
                    r"remove it$")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["rel[1]", "*", "?el1", "rel*"])
def test_glob_characters_in_a_name_touch_no_other_release(tmp_path, job_config, musicgen_ckpt,
                                                          name):
    out = tmp_path / "out"
    other_staging = out / ".rel1.staging-424242"  # a concurrent export of out/rel1
    other_aside = out / ".rel1.replaced-424243"  # rel1's previous release, set aside
    for folder in (other_staging, other_aside):
        folder.mkdir(parents=True)
        (folder / "state_dict.bin").write_bytes(b"x")
    (other_aside / "export.json").write_text('{"files": {}}')
    exported_in_process(job_config, *input_args(musicgen_ckpt), f"output.dir='{out / name}'",
                        "validate=none")
    assert (other_staging / "state_dict.bin").exists() and (other_aside / "export.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [name, other_staging.name, other_aside.name])


@pytest.mark.slow  # 2,000 leftover folders made and removed: seconds of file system work
def test_recovery_removes_only_what_an_export_left(tmp_path, job_config, caplog, musicgen_ckpt):
    out = tmp_path / "out"
    planted = out / ".release.staging-7"  # a name of ours, holding a user's file
    planted.mkdir(parents=True)
    (planted / "precious.txt").write_text("mine")
    for pid in range(1000, 3000):  # many real leftovers: one line about them, not 2000
        (out / f".release.staging-{pid}").mkdir()
        (out / f".release.staging-{pid}" / "state_dict.bin").write_bytes(b"x")
    with caplog.at_level(logging.INFO):  # what the app logs on stderr
        exported_in_process(job_config, *input_args(musicgen_ckpt),
                            f"output.dir={out / 'release'}", "validate=none")
    assert (planted / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [planted.name, "release"]
    assert len([r for r in caplog.records if "staging" in r.getMessage()]) == 1


# --- nothing of the exporting machine leaks ---------------------------------------------------
def _cfg_edit(**values):
    def edit(pkg):
        cfg = pkg["xp.cfg"]
        OmegaConf.set_struct(cfg, False)
        for key, value in values.items():
            OmegaConf.update(cfg, key.replace("__", "."), value)
    return edit


@pytest.mark.parametrize("values, overrides, message", [
    pytest.param({"solver": "${oc.env:SECRET}"}, (),
                 r"xp.cfg's solver is an interpolation \('\$\{oc.env:SECRET\}'\), which the "
                 r"exporter never resolves", marks=[THROUGH_APP, pytest.mark.slow]),
    ({"compression_model_checkpoint": "//pretrained/x-${oc.env:SECRET}"}, (),
     r"xp.cfg's compression_model_checkpoint is an interpolation"),
    ({"transformer_lm__dim": "${oc.env:SECRET_DIM}"}, ("validate=load",),
     r"validation 'load_lm_model' failed: xp.cfg uses the resolver 'oc.env', which is never "
     r"run on the exporting machine \(it could read its environment\); write the value itself "
     r"into the config$"),
    ({"transformer_lm__dim": "${transformer_lm.num_heads}",
      "transformer_lm__num_heads": "${transformer_lm.dim}"}, ("validate=load",),
     r"validation 'load_lm_model' failed: .*Recursion|validation 'load_lm_model' failed: "),
    ({"transformer_lm__dim": "${nope.nothing}"}, ("validate=load",),
     r"validation 'load_lm_model' failed: InterpolationKeyError: Interpolation key "
     r"'nope.nothing' not found$"),
    ({"transformer_lm__dim": "${made_up:1}"}, ("validate=load",),
     r"validation 'load_lm_model' failed: xp.cfg uses the resolver 'made_up', which is never "
     r"run on the exporting machine"),
    ({"dataset__segment_duration": "thirty"}, (),
     r"MusicGen.get_pretrained needs a number of seconds in xp.cfg's "
     r"dataset.segment_duration, which holds 'thirty'; validate=load exports it without the "
     r"get_pretrained check$"),
], ids=["env-solver", "env-compression-model", "env-in-model", "cycle", "missing-key",
        "unknown-resolver", "non-numeric-segment"])
def test_config_interpolations_are_data(tmp_path, refused, caplog, musicgen_ckpt, values,
                                        overrides, message):
    """The secret reaches no file (the app's log among them, through the app) and no log
    record (in process)."""
    path = checkpoint_copy(tmp_path, musicgen_ckpt, _cfg_edit(**values))
    with caplog.at_level(logging.INFO):
        line = refused(tmp_path, *input_args(path), *overrides, message=message,
                       setenv={"SECRET": "hunter2-secret", "SECRET_DIM": "32"})
    assert "hunter2-secret" not in line and "hunter2-secret" not in caplog.text
    for file in tmp_path.rglob("*"):
        if file.is_file() and not file.is_symlink() and file.suffix != ".th":
            assert b"hunter2-secret" not in file.read_bytes(), file


def test_a_compression_model_signature_cannot_walk_out_of_the_dora_dir(tmp_path, refused,
                                                                       musicgen_ckpt):
    """//sig/<sig> comes from the checkpoint: "../" would bundle any checkpoint.th on this
    machine into a release its user then shares."""
    elsewhere = tmp_path / "private" / "checkpoint.th"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"not to be read")
    path = checkpoint_copy(tmp_path, musicgen_ckpt, _cfg_edit(
        compression_model_checkpoint="//sig/../../private"))
    refused(tmp_path, *input_args(path),
            message=r"cannot resolve the compression model //sig/../../private: "
                    r"'../../private' is not an XP signature \(letters, digits, '_' and '-'\)$")


def test_env_interpolations_are_published_unresolved(tmp_path, job_config, monkeypatch,
                                                     musicgen_ckpt):
    """validate=none publishes the config as written: the variable, never its value."""
    path = checkpoint_copy(tmp_path, musicgen_ckpt, _cfg_edit(**{
        "transformer_lm__dim": "${oc.env:SECRET_DIM}"}))
    rel = tmp_path / "rel"
    monkeypatch.setenv("SECRET_DIM", "32")
    exported_in_process(job_config, *input_args(path), "validate=none", f"output.dir={rel}")
    cfg = torch.load(rel / "state_dict.bin", weights_only=True)["xp.cfg"]
    assert "dim: ${oc.env:SECRET_DIM}" in cfg


def test_read_only_config_with_null_conditioners_is_repaired(tmp_path, musicgen_xp):
    def edit(pkg):
        cfg = pkg["xp.cfg"]
        OmegaConf.set_struct(cfg, False)
        cfg.conditioners = None
        cfg.classifier_free_guidance.training_dropout = 0.0
        OmegaConf.set_readonly(cfg, True)

    path = checkpoint_copy(tmp_path, musicgen_xp(), edit)
    result = export_release(path, tmp_path / "rel", validate=ValidateConfig(level="none"),
                            compression=NoCompression())
    assert result.manifest.repairs and result.manifest.repairs[0].startswith(
        "conditioners: null -> {}")


# --- inputs that are not checkpoint files -------------------------------------------------
@pytest.mark.slow  # three app processes: a regression would read /dev/zero or block on the FIFO
@THROUGH_APP
def test_devices_fifos_and_folders_are_named_for_what_they_are(tmp_path, refused):
    fifo = tmp_path / "pipe.th"
    os.mkfifo(fifo)
    for path, message in [("/dev/zero", r"/dev/zero is not a regular file \(a character "
                                        r"device\): not a checkpoint$"),
                          (fifo, r"pipe.th is not a regular file \(a FIFO\): not a checkpoint$")]:
        refused(tmp_path, *input_args(path), message=message)
    xp = tmp_path / "xp"
    (xp / "checkpoint.th").mkdir(parents=True)
    refused(tmp_path, "input=xp", f"input.path={xp}",
            message=r"xp/checkpoint.th is not a checkpoint file \(a folder\)$")


def test_empty_fsdp_state_warns_and_best_state_without_model_says_so(tmp_path, refused,
                                                                      job_config, caplog,
                                                                      musicgen_ckpt):
    path = checkpoint_copy(tmp_path, musicgen_ckpt,
                           lambda pkg: pkg.update(fsdp_best_state={"model": {}}))
    with caplog.at_level(logging.INFO):
        exported_in_process(job_config, *input_args(path), "validate=none",
                            f"output.dir={tmp_path / 'rel'}")
    assert "fsdp_best_state holds an empty model state; exporting best_state instead " \
           "(export_lm would export the empty state)" in caplog.text
    assert json.loads((tmp_path / "rel" / "export.json").read_text())["state"]["key"] == \
        "best_state"
    bad = checkpoint_copy(tmp_path / "b", musicgen_ckpt,
                          lambda pkg: pkg.update(best_state={"weights": {}}))
    refused(tmp_path / "b", *input_args(bad),
            message=r"checkpoint.th: 'best_state' has no 'model' entry \(it holds "
                    r"\['weights'\]\): not a solver's best state$")


def test_a_checkpoint_truncated_while_it_is_read(tmp_path, musicgen_ckpt):
    """The records are read with pread, not through a map: a file cut short while an export
    reads it is an error, not a SIGBUS."""
    path = tmp_path / "checkpoint.th"
    path.write_bytes(musicgen_ckpt.read_bytes())
    state = load_checkpoint(path)["best_state"]["model"]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)
    with pytest.raises(ExportError, match=r"changed while it was being read \(its size or "
                                          r"modification time differs\)"):
        for tensor in state.values():
            tensor.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_checkpoint(tmp_path, refused, musicgen_ckpt):
    path = tmp_path / "checkpoint.th"
    path.write_bytes(musicgen_ckpt.read_bytes())
    path.chmod(0)
    refused(tmp_path, *input_args(path), message=r"cannot read .*: Permission denied$")


@pytest.mark.slow  # an app process: HYDRA_FULL_ERROR=1's traceback
def test_hydra_full_error_shows_the_chained_cause(tmp_path, refused, musicgen_ckpt):
    """One line by default; HYDRA_FULL_ERROR=1 (as for Hydra's own errors) adds the traceback
    and the cause the one line was raised from."""
    program = c.integer(1) + c.integer(2) + pickle.APPEND  # APPEND on an int
    path = _crafted(tmp_path, musicgen_ckpt, c.in_history, program)
    message = r"is not a readable torch checkpoint: 'int' object has no attribute 'append'$"
    refused(tmp_path, *input_args(path), message=message)
    full = run_app(*input_args(path), f"output.dir={tmp_path / 'full'}", cwd=tmp_path,
                   env={**app_env(), "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and full.stdout == ""
    assert "AttributeError: 'int' object has no attribute 'append'" in full.stderr
    assert "The above exception was the direct cause of the following exception" in full.stderr
    assert re.search(r"ExportError: .*" + message, full.stderr, re.M)
