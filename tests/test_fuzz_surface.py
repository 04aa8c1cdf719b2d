"""Structure-aware fuzzing of what a checkpoint carries beside its tensors, where it reaches
what a release shows: the history (metric names and values of any type and size) in the
card, the curves, ``export.json`` and ``mode=list``; ``xp.cfg``'s architecture values in the
checks before any model is built.

Every case ends in a release whose card holds no live Markdown or HTML, whose manifest is
strict JSON of bounded size, and which lists on one line; or in one clean ExportError with
nothing published. Never another exception.

CI runs a few dozen derandomized cases per test; ``FUZZ_SURFACE_EXAMPLES=5000 make test
PYTEST_ARGS="-k fuzz_surface"`` runs a random campaign.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from omegaconf import OmegaConf, open_dict

from audiocraft_ext import ExportError, export_release
from audiocraft_ext.app.listing import format_listing, list_xps
from tests.support.helpers import torch_load

pytestmark = pytest.mark.slow  # each case is an export
EXAMPLES = int(os.environ.get("FUZZ_SURFACE_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    derandomize="FUZZ_SURFACE_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])
_counter = itertools.count()

HOSTILE_TEXTS = ["<script>alert(1)</script>", "[x](javascript:alert(1))", "![i](http://e/x.png)",
                 "---", "```", "`", "|", "\n[ERROR] forged", "<!--", "# title", "$^$", "\x00",
                 "ce", "valid", "train", "duration", "\u202e", "😀" * 10]
names = st.one_of(st.sampled_from(HOSTILE_TEXTS), st.text(max_size=40),
                  st.integers(0, 300_000).map(lambda n: "m" * n))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-(10 ** 400), 10 ** 400),
                    st.sampled_from([10 ** 400, -(10 ** 400), 1e308, -1e308, 0, -0.0]))
values = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8),
                   st.lists(st.integers(), max_size=3))
stages = st.dictionaries(names, values, max_size=90)
epochs = st.one_of(st.dictionaries(st.one_of(st.sampled_from(["train", "valid"]), names),
                                   st.one_of(stages, values), max_size=4), values)
histories = st.one_of(st.lists(epochs, max_size=6), values)


@pytest.fixture(scope="module")
def base(musicgen_ckpt) -> dict:
    pkg = torch_load(musicgen_ckpt)
    pkg.pop("ema", None)
    return pkg


def _case(tmp_path_factory, source: Path, pkg: dict) -> Path:
    """``pkg`` saved as an XP of a Dora dir of its own, beside the XP of the compression model
    it names (//sig/SIG)."""
    case = tmp_path_factory.mktemp(f"fuzzs{next(_counter)}", numbered=False)
    xps = case / "dora" / "xps"
    (xps / "fuzzed").mkdir(parents=True)
    sig = str(pkg["xp.cfg"].compression_model_checkpoint).removeprefix("//sig/")
    (xps / sig).symlink_to(source.parent.parent / sig)
    torch.save(pkg, xps / "fuzzed" / "checkpoint.th")
    return xps / "fuzzed" / "checkpoint.th"


def _assert_inert(card: str) -> None:
    body = card.split("\n---\n", 1)[1]
    for token in MarkdownIt("commonmark").enable("table").parse(body):
        for t in [token, *(token.children or [])]:
            assert t.type not in ("html_inline", "html_block"), t.content
            if t.type in ("link_open", "image"):
                assert t.attrs.get("href", t.attrs.get("src")) in ("training_curves.png",), t


@SETTINGS
@given(history=histories)
def test_fuzz_surface_history_reaches_card_manifest_and_listing_as_data(
        base, musicgen_ckpt, tmp_path_factory, history):
    ckpt = _case(tmp_path_factory, musicgen_ckpt, {**base, "history": history})
    dest = ckpt.parent.parent.parent.parent / "release"
    result = export_release(ckpt, dest, validate="none")
    card = (dest / "README.md").read_text()
    _assert_inert(card)
    assert len(card) < 60_000, len(card)
    manifest_text = (dest / "export.json").read_text()
    assert len(manifest_text) < 200_000
    json.loads(manifest_text, parse_constant=lambda c: pytest.fail(f"{c} in export.json"))
    event(f"epochs: {min(result.manifest.training.epochs, 3) if result.manifest.training else 0}")
    event("curves drawn" if result.manifest.curves else "no curves")
    entries = list_xps(ckpt.parent.parent.parent)
    [fuzzed] = [e for e in entries if e.sig == "fuzzed"]
    assert not fuzzed.problems, fuzzed.problems
    assert len(format_listing(entries).splitlines()) == 1 + len(entries)
    json.loads(format_listing(entries, as_json=True),
               parse_constant=lambda c: pytest.fail(f"{c} in the listing"))
    shutil.rmtree(ckpt.parent.parent.parent.parent)


ARCHITECTURE = ["transformer_lm.num_layers", "transformer_lm.dim", "transformer_lm.num_heads",
                "transformer_lm.n_q", "transformer_lm.card", "dataset.segment_duration",
                "classifier_free_guidance.inference_coef", "transformer_lm.hidden_scale",
                "sample_rate", "channels", "codebooks_pattern.modeling"]
config_values = st.one_of(
    st.integers(-5, 70), st.sampled_from([0, 1, 2, 3, 4, 31, 32, 33, 64, 256, 257, 100_000,
                                          200_000, 10 ** 9, 10 ** 18, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["delay", "parallel", "x"]),
    st.none(), st.booleans())


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(ARCHITECTURE), config_values, min_size=1,
                               max_size=3))
def test_fuzz_surface_architecture_values_end_cleanly(base, musicgen_ckpt, tmp_path_factory,
                                                      changes):
    cfg = base["xp.cfg"].copy()
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    ckpt = _case(tmp_path_factory, musicgen_ckpt, {**base, "xp.cfg": cfg})
    dest = ckpt.parent.parent.parent.parent / "release"
    try:
        export_release(ckpt, dest, validate="load")
    except ExportError as exc:
        assert "\n" not in str(exc) and not dest.exists()
        event(f"refused: {str(exc).split(': ', 1)[-1][:40]}")
    else:
        event("published")
        assert all(not (isinstance(v, float) and not math.isfinite(v)) or "coef" not in k
                   for k, v in changes.items()), "a non-finite guidance was published"
    shutil.rmtree(ckpt.parent.parent.parent.parent)


FOLDER_NAMES = ["config.json", "model.safetensors", "spiece.model", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "pytorch_model.bin",
                "model-00001-of-00002.safetensors", "x", ".hidden", "added_tokens.json"]
spoilers = st.one_of(
    st.tuples(st.just("bytes"), st.sampled_from(FOLDER_NAMES), st.binary(max_size=64)),
    st.tuples(st.just("truncate"), st.sampled_from(FOLDER_NAMES), st.integers(0, 4096)),
    st.tuples(st.just("append"), st.sampled_from(FOLDER_NAMES), st.binary(min_size=1,
                                                                          max_size=64)),
    st.tuples(st.just("remove"), st.sampled_from(FOLDER_NAMES), st.none()),
    st.tuples(st.just("link"), st.sampled_from(FOLDER_NAMES),
              st.sampled_from(["/etc/passwd", "spiece.model", "../t5", "nowhere"])),
    st.tuples(st.just("folder"), st.sampled_from(FOLDER_NAMES), st.none()),
    st.tuples(st.just("json"), st.sampled_from(["config.json", "tokenizer_config.json",
                                                "special_tokens_map.json"]),
              st.dictionaries(st.sampled_from(["num_layers", "d_model", "vocab_size",
                                               "num_heads", "d_ff", "model_max_length",
                                               "extra_ids", "eos_token"]),
                              st.one_of(st.integers(-2, 10 ** 6), st.text(max_size=5),
                                        st.none()), max_size=3)))


def _spoil(folder: Path, how: str, name: str, arg) -> None:
    path = folder / name
    if how in ("bytes", "truncate", "append", "remove", "folder", "link"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif how != "append" and how != "truncate":
            path.unlink(missing_ok=True)
    if how == "bytes":
        path.write_bytes(arg)
    elif how == "truncate" and path.is_file():
        with open(path, "r+b") as f:
            f.truncate(min(arg, path.stat().st_size))
    elif how == "append" and path.is_file():
        with open(path, "ab") as f:
            f.write(arg)
    elif how == "folder":
        path.mkdir()
    elif how == "link":
        path.symlink_to(arg)
    elif how == "json" and path.is_file() and not path.is_symlink():
        try:  # a config an earlier spoil left intact: change some of its values
            data = json.loads(path.read_bytes())
        except ValueError:  # not JSON (any more): nothing to change
            return
        if isinstance(data, dict):
            path.write_text(json.dumps({**data, **arg}))


@SETTINGS
@given(spoils=st.lists(spoilers, min_size=1, max_size=3))
def test_fuzz_surface_text_encoder_folders_end_cleanly(t5_lm, tiny_t5_home, tmp_path_factory,
                                                       spoils):
    case = tmp_path_factory.mktemp(f"fuzzt{next(_counter)}", numbered=False)
    [snapshot] = (tiny_t5_home / "hub" / "models--t5-small" / "snapshots").iterdir()
    folder = case / "t5"
    shutil.copytree(snapshot, folder)
    for how, name, arg in spoils:
        _spoil(folder, how, name, arg)
    dest = case / "release"
    try:
        export_release(t5_lm, dest, validate="none", transformers=True, text_encoder=str(folder))
    except ExportError as exc:
        assert "\n" not in str(exc) and not dest.exists()
        event(f"refused: {str(exc).split(': ', 1)[-1][:40]}")
    else:
        event("published")
        for name in ("spiece.model", "tokenizer.json"):  # never a file from elsewhere
            released = dest / name
            if released.exists():
                assert not released.is_symlink()
                assert b"root:" not in released.read_bytes()
    shutil.rmtree(case)
