"""Structure-aware fuzzing of the unpickler: hypothesis writes pickle opcode programs over the
allow-listed globals (and a few refused ones) with arbitrary arguments, splices each into a
real checkpoint (as a state value, a state key, the history, the config, the optimizer), and
runs inspection and an export of it in a forked child (``fuzz_worker``) with faulthandler and
a timeout. Every case must end in a clean one-line error with nothing published, or in a
published release that loads with ``weights_only=True`` and holds only the source's bytes:
no signal death, no hang, no traceback, no uninitialised memory.

CI runs a few hundred derandomized cases per stack;
``FUZZ_PICKLE_EXAMPLES=20000 make test PYTEST_ARGS="-k fuzz_pickle"`` runs a random campaign.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import crafted as c
from tests.support.helpers import ROOT, torch_load

pytestmark = pytest.mark.slow  # 300 cases, each a forked export: about 40 s

EXAMPLES = int(os.environ.get("FUZZ_PICKLE_EXAMPLES", "300"))
FILL = 0x3C  # every storage byte of the fuzzed checkpoints (float16 0x3C3C = 1.06)
# records of the programs' own, free to be declared as any storage type
FREE_RECORDS = {"f0": 16, "f1": 64, "f2": 4096, "f3": 0}
_counter = itertools.count()

GLOBALS = [
    ("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float",
                              "bool", "str", "bytes", "getattr", "eval")
] + [
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode"),
    ("torch", "Size"), ("torch", "device"), ("torch", "Tensor"), ("torch", "float16"),
    ("torch", "float8_e4m3fn"), ("torch", "HalfStorage"), ("torch", "FloatStorage"),
    ("torch", "LongStorage"), ("torch.storage", "UntypedStorage"), ("torch", "load"),
    ("torch.nn.parameter", "Parameter"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.nodes", "AnyNode"), ("omegaconf.nodes", "StringNode"),
    ("omegaconf.nodes", "IntegerNode"), ("omegaconf.base", "ContainerMetadata"),
    ("omegaconf.base", "Metadata"), ("typing", "Any"), ("os", "system"),
]
TEXTS = ["storage", "cpu", "model", "0", "1", "f8", "V8", "O", "<", "|", "latin1", "base64",
         "${oc.env:SECRET}", "${nope}", "_content", "_metadata", "_val", "_parent", "size",
         "stride", "offset", "storage", "numel", "dtype", "key", "code", "byteorder", "func",
         "__class__", "__defaults__", "__setstate__", "\n[ERROR] forged", "x" * 300]
NUMBERS = [0, 1, 2, 3, -1, 31, 32, 257, 1 << 31, 1 << 40, 1 << 63, -(1 << 63), 10 ** 30]


class _Templates(dict):
    def __repr__(self) -> str:  # hypothesis reports the test's arguments: not megabytes
        return f"<templates {sorted(self)}>"


@pytest.fixture(scope="module")
def templates(musicgen_ckpt) -> dict[str, bytes]:
    """A real checkpoint (without its EMA, to keep cases small) with the marker at each place."""
    out = _Templates()
    for name, place in c.PLACES.items():
        pkg = torch_load(musicgen_ckpt)
        pkg.pop("ema", None)
        out[name] = c.save_with_marker(pkg, place)
    return out


@pytest.fixture(scope="module")
def worker():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SECRET": "hunter2-fuzz"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fuzz_worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def outcomes():
    counts: Counter = Counter()
    yield counts
    print(f"\nfuzz_pickle outcomes ({sum(counts.values())} cases): {dict(counts)}")


_TYPES = {"HalfStorage": ("torch", 2), "FloatStorage": ("torch", 4),
          "UntypedStorage": ("torch.storage", 1)}


def _valid_ref(key: str, storage_type: str) -> bytes:
    module, size = _TYPES[storage_type]
    return c.storage(key, FREE_RECORDS[key] // size, storage_type, module)


def _programs(keys: dict[str, int]) -> st.SearchStrategy[bytes]:
    """Opcode programs that each push one object."""
    key = st.sampled_from(sorted(keys) + sorted(FREE_RECORDS) + ["99", "x", "0/../1"])
    numbers = st.one_of(st.sampled_from(NUMBERS + sorted(set(keys.values()))),
                        st.integers(-(1 << 70), 1 << 70))
    small = st.one_of(st.integers(0, 70), numbers)
    name = st.sampled_from(GLOBALS)
    ref = st.one_of(
        st.builds(_valid_ref, st.sampled_from(sorted(FREE_RECORDS)),
                  st.sampled_from(sorted(_TYPES))),
        st.builds(lambda k, n, t: c.storage(k, n, *t), key, numbers,
                  st.sampled_from([("HalfStorage",), ("FloatStorage",),
                                   ("UntypedStorage", "torch.storage"), ("int", "builtins")])))
    dims = st.lists(small, max_size=4).map(lambda xs: c.tup(*map(c.integer, xs)))
    leaf = st.one_of(
        numbers.map(c.integer),
        st.floats(allow_nan=True, allow_infinity=True).map(c.floating),
        st.one_of(st.sampled_from(TEXTS), st.text(max_size=20)).map(c.text),
        st.binary(max_size=24).map(c.raw_bytes),
        st.sampled_from([c.NONE, c.TRUE, c.FALSE]),
        name.map(lambda g: c.glob(*g)),
        name.map(lambda g: c.stack_global(*g)),
        ref,
        st.integers(0, 5).map(c.get),
        st.sampled_from([c.tup(), c.lst(), c.dct()]),
        name.map(lambda g: c.call(c.glob(*g))),  # called without arguments
    )

    def composite(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        # every branch draws children (hypothesis checks that it can recurse)
        args = st.lists(children, min_size=1, max_size=6)
        return st.one_of(
            args.map(lambda xs: c.tup(*xs)),
            args.map(lambda xs: c.lst(*xs)),
            st.lists(st.tuples(children, children), min_size=1, max_size=4).map(
                lambda ps: c.dct(*ps)),
            st.tuples(name, args).map(lambda t: c.call(c.glob(*t[0]), *t[1])),
            st.tuples(name, args).map(lambda t: c.newobj(c.glob(*t[0]), *t[1])),
            st.tuples(children, children).map(lambda t: c.build(*t)),
            st.tuples(children, st.integers(0, 5)).map(lambda t: t[0] + c.put(t[1])),
            st.tuples(children, st.integers(1, 260)).map(lambda t: t[0] + b"\x85" * t[1]),
            st.tuples(ref, small, dims, dims, st.sampled_from(["v2", "v3"]), children).map(
                lambda t: c.call(c.glob("torch._utils", f"_rebuild_tensor_{t[4]}"), t[0],
                                 c.integer(t[1]), t[2], t[3], c.FALSE, c.NONE,
                                 *([c.glob("torch", "float16")] if t[4] == "v3" else [t[5]]))),
        )

    return st.recursive(leaf, composite, max_leaves=24)


@settings(max_examples=EXAMPLES, deadline=None,
          derandomize="FUZZ_PICKLE_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_crafted_pickles_end_cleanly(templates, worker, outcomes, tmp_path_factory, data):
    place = data.draw(st.sampled_from(sorted(templates)), label="place")
    template = templates[place]
    program = data.draw(_programs(c.storage_keys(template)), label="program")
    validate = data.draw(st.sampled_from(["none", "load"]), label="validate")
    case = tmp_path_factory.mktemp(f"fuzzp{next(_counter)}", numbered=False)
    extra = {k: bytes([FILL]) * n for k, n in FREE_RECORDS.items()}
    checkpoint = c.write(case / "checkpoint.th",
                         c.splice(template, program, fill=FILL, extra=extra))
    request = {"checkpoint": str(checkpoint), "dest": str(case / "out" / "release"),
               "validate": validate, "fill": FILL}
    worker.stdin.write(json.dumps(request) + "\n")
    worker.stdin.flush()
    result = json.loads(worker.stdout.readline())
    outcome = ("published" if result.get("code") == 0 else "refused" if result.get("code") == 1
               else result["end"])
    outcomes[outcome] += 1
    event(f"{place}: {outcome}")
    assert result["end"] == "exit", f"{result['end']} on {checkpoint}: {result.get('text')}"
    assert result["code"] in (0, 1), f"code {result['code']} on {checkpoint}:\n{result['text']}"
    if result["code"] == 1:
        event(f"error: {result['text'].split(': ', 1)[-1][:50]}")
    for path in Path(case).rglob("*"):  # the environment of the exporting machine stays out
        if path.is_file() and path.name != "checkpoint.th":
            assert b"hunter2-fuzz" not in path.read_bytes(), path
    shutil.rmtree(case)  # a clean case leaves nothing: campaigns run to tens of thousands
