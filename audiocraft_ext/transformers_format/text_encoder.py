"""The T5 a transformers release is made with, and the tokenizer files it ships.

The T5 comes by name from the Hugging Face cache or Hub, as transformers finds it, or from a
local folder (``output.text_encoder``). A folder is checked before transformers reads anything
of it: only the files of a T5 encoder and its tokenizer, each a regular file (never a symbolic
link: ``spiece.model -> /etc/passwd`` would be published as the release's vocabulary) no larger
than such a file needs, and a ``config.json`` whose sizes the weights have. transformers then
reads a private copy made from the files opened here, so the folder cannot change between the
check and the read. The tokenizer files written
into the release are checked after: the tokenizer loads from them, and it and the
sentencepiece vocabulary (which transformers 4.44's slow tokenizer reads) tokenize a prompt as
the source does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError, first_line, setting, shown
from ..writing.release_format import TOKENIZER_FILES

_MiB, _GiB = 1 << 20, 1 << 30
# The files of a T5 text encoder's folder: name -> (most bytes, what it is). Real sizes: T5's
# spiece.model 0.8 MB (all T5 and Flan-T5 sizes share it), tokenizer.json 1.4 MB (Flan-T5:
# 2.4 MB), the JSON configs a few KB, model.safetensors 0.9 GB (t5-base) to 45 GB (t5-11b);
# the bounds are ten times that, or more.
FOLDER_FILES: dict[str, tuple[int, str]] = {
    "config.json": (_MiB, "a model config"),
    "generation_config.json": (_MiB, "a generation config"),
    "model.safetensors": (64 * _GiB, "T5's weights (t5-11b: 45 GB)"),
    "model.safetensors.index.json": (16 * _MiB, "a shard index"),
    "spiece.model": (8 * _MiB, "T5's sentencepiece vocabulary (0.8 MB)"),
    "tokenizer.json": (32 * _MiB, "T5's tokenizer (1.4-2.4 MB)"),
    "tokenizer_config.json": (_MiB, "a tokenizer config"),
    "special_tokens_map.json": (_MiB, "a special tokens map"),
    "added_tokens.json": (_MiB, "an added tokens list"),
}
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")  # sharded weights (Flan-T5 XL+)
_SHARD_BYTES = (64 * _GiB, "a shard of T5's weights")
# tokenized by the source and by what the release holds: words, punctuation, digits
PROMPT = "warm lo-fi piano with soft drums, 90 BPM; rain & vinyl crackle"


@dataclass(frozen=True)
class TextEncoder:
    """The T5 loaded by transformers, and where its files are."""

    model: Any  # transformers' T5EncoderModel
    tokenizer: Any
    files: Path | str  # the checked private copy of the folder, or the model's name
    origin: str  # what the user named: the folder, or the model's name


def _limit(name: str) -> tuple[int, str] | None:
    return FOLDER_FILES.get(name) or (_SHARD_BYTES if _SHARD.match(name) else None)


def checked_folder(folder: Path) -> dict[str, os.stat_result]:
    """The files of the text encoder's folder (name -> lstat), once each is a regular file a
    T5 folder holds, within its bound; ExportError naming the first that is not."""
    if not folder.is_dir():
        raise ExportError(f"{setting('output.text_encoder', str(folder))}: not a folder (a "
                          "local folder holding the LM's T5 and its tokenizer)")
    found = {}
    for name in sorted(_listed(folder)):
        path, limit = folder / name, _limit(name)
        if limit is None:
            raise ExportError(
                f"{folder} holds {shown(name)}, which is not a file of a T5 text encoder "
                f"(accepted: {', '.join(FOLDER_FILES)}, model-NNNNN-of-NNNNN.safetensors)")
        status = os.lstat(path)
        if stat.S_ISLNK(status.st_mode):
            raise ExportError(f"{path} is a symbolic link (to {shown(os.readlink(path))}): "
                              "the text encoder's folder must hold regular files (copy them "
                              f"there, or leave {setting('output.text_encoder')} unset to read "
                              "the Hugging Face cache)")
        if not stat.S_ISREG(status.st_mode):
            raise ExportError(f"{path} is not a regular file")
        if status.st_size > limit[0]:
            raise ExportError(f"{path} is {status.st_size:,} bytes, more than the "
                              f"{limit[0]:,} accepted for {limit[1]}")
        found[name] = status
    return found


def _listed(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise ExportError(f"cannot read the text encoder's folder {folder}: "
                          f"{exc.strerror or first_line(exc)}") from exc


def _open_checked(path: Path, checked: os.stat_result) -> int:
    """``path`` opened without following a link, once it is still the file checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # replaced by a link (ELOOP), removed, unreadable
        raise ExportError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, now.st_size) != (checked.st_dev, checked.st_ino,
                                                  checked.st_size):
        os.close(fd)
        raise ExportError(f"{path} changed while it was read")
    return fd


def _copy_fd(fd: int, dest: Path, limit: int, source: str) -> None:
    """Copy at most ``limit`` bytes from ``fd`` to ``dest``; ExportError when it holds more."""
    with os.fdopen(os.dup(fd), "rb") as src, open(dest, "xb") as out:
        shutil.copyfileobj(_Bounded(src, limit + 1), out)
    if dest.stat().st_size > limit:
        raise ExportError(f"{source} is more than the {limit:,} bytes accepted")


class _Bounded:
    """A file object that reads at most ``left`` bytes of ``raw``."""

    def __init__(self, raw: Any, left: int) -> None:
        self.raw, self.left = raw, left

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.raw.read(size) if size else b""
        self.left -= len(data)
        return data


@contextmanager
def _private_copy(folder: Path) -> Iterator[Path]:
    """A temporary folder holding what was checked in ``folder``: the small files copied, the
    weights linked to the file descriptors opened here (``/proc/self/fd``)."""
    checked = checked_folder(folder)
    proc = os.path.isdir("/proc/self/fd")
    with tempfile.TemporaryDirectory(prefix="text-encoder-") as scratch, ExitStack() as fds:
        for name, status in checked.items():
            fd = _open_checked(folder / name, status)
            fds.callback(os.close, fd)
            if name.endswith(".safetensors"):  # gigabytes: linked to what was opened
                os.symlink(f"/proc/self/fd/{fd}" if proc else folder / name,
                           Path(scratch) / name)
            else:
                _copy_fd(fd, Path(scratch) / name, status.st_size, str(folder / name))
        yield Path(scratch)


@contextmanager
def loaded_text_encoder(name: str, folder: str | None) -> Iterator[TextEncoder]:
    """The T5 ``name`` (transformers finds it in the cache or on the Hub), or the one in
    ``folder`` (checked first); its files stay readable within the block."""
    import transformers

    with ExitStack() as stack:
        files: Path | str = name
        if folder is not None:
            files = stack.enter_context(_private_copy(Path(folder)))
            _check_config(files, Path(folder))
        origin = folder or name
        try:
            model = transformers.T5EncoderModel.from_pretrained(files)
            tokenizer = transformers.AutoTokenizer.from_pretrained(files)
        except Exception as exc:  # tokenizers and sentencepiece raise their own
            raise ExportError(
                f"{setting('output.transformers', True)} needs the T5 text encoder "
                f"{shown(origin)}, which transformers could not load here ({first_line(exc)}); "
                "it comes from the Hugging Face Hub or its cache (HF_HOME), or give a local "
                f"folder with {setting('output.text_encoder', '<folder>')}") from exc
        yield TextEncoder(model, tokenizer, files, origin)


_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_EMBEDDING = ("shared.weight", "encoder.embed_tokens.weight")
_FEED_FORWARD = ("encoder.block.0.layer.1.DenseReluDense.wi.weight",  # wi_0: gated (v1.1)
                 "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
_QUERY = ("encoder.block.0.layer.0.SelfAttention.q.weight",)


def _check_config(files: Path, folder: Path) -> None:
    """The sizes ``config.json`` gives transformers' builder, against the weights' shapes
    (from the safetensors headers): a config of 20,000 layers over 2 would be built before
    transformers noticed (37 s and 2 GB, then a MemoryError). Sizes the config leaves out
    (transformers' defaults) and unreadable files are left to transformers."""
    from safetensors import safe_open

    try:
        config = json.loads((files / "config.json").read_text())
        shapes: dict[str, tuple[int, ...]] = {}
        for weights in sorted(files.glob("*.safetensors")):
            with safe_open(str(weights), framework="pt") as tensors:
                for key in tensors.keys():  # a safetensors handle, not a dict
                    shapes[key] = tuple(tensors.get_slice(key).get_shape())
    except Exception:  # noqa: BLE001  (transformers reports it, in its words, when it loads)
        return
    if not isinstance(config, dict):
        return

    def size(tensors: tuple[str, ...], dim: int) -> int | None:
        return next((shapes[t][dim] for t in tensors if len(shapes.get(t, ())) > dim), None)

    blocks = len({m.group(1) for key in shapes if (m := _BLOCK.match(key))})
    checks = [(f"{key}={config.get(key)}", config.get(key), found) for key, found in (
        ("num_layers", blocks or None), ("vocab_size", size(_EMBEDDING, 0)),
        ("d_model", size(_EMBEDDING, 1)), ("d_ff", size(_FEED_FORWARD, 0)))]
    heads, d_kv = config.get("num_heads"), config.get("d_kv")
    if type(heads) is int and type(d_kv) is int:
        checks.append((f"num_heads x d_kv={heads} x {d_kv}", heads * d_kv, size(_QUERY, 0)))
    for said, given, found in checks:
        if found is not None and type(given) is int and given != found:
            raise ExportError(f"{folder / 'config.json'} says {said} but its weights make it "
                              f"{found}: refusing to build that T5")


def save_tokenizer(text_encoder: TextEncoder, folder: Path) -> None:
    """The tokenizer's files, by their fixed names only (a release holds nothing else); the
    ones transformers 5.x no longer writes (the sentencepiece model, which 4.44's slow
    tokenizer reads) are copied from where the T5 came from. Then checked: see
    :func:`check_tokenizer`."""
    from huggingface_hub import try_to_load_from_cache

    with tempfile.TemporaryDirectory() as scratch:
        try:
            text_encoder.tokenizer.save_pretrained(scratch)
        except Exception as exc:  # a tokenizer built from a user's files fails its own way
            raise ExportError(f"the tokenizer of {text_encoder.origin} cannot be saved "
                              f"({type(exc).__name__}: {first_line(exc)})") from exc
        _portable_special_tokens(Path(scratch) / "tokenizer_config.json")
        for name in TOKENIZER_FILES:
            found: Any = Path(scratch) / name
            if not found.is_file():
                found = text_encoder.files / name if isinstance(text_encoder.files, Path) \
                    else try_to_load_from_cache(text_encoder.files, name)
            if isinstance(found, (str, Path)) and Path(found).is_file():
                # the cache's files are links into its blobs: followed, but bounded
                with open(found, "rb") as source:
                    _copy_fd(source.fileno(), folder / name, FOLDER_FILES[name][0],
                             f"{name} of {text_encoder.origin}")
    check_tokenizer(text_encoder, folder)


def _portable_special_tokens(path: Path) -> None:
    """transformers 5.x writes T5's ``<extra_id_N>`` tokens as an ``extra_special_tokens``
    list, which 4.48 to 4.57 read as a dict (``AttributeError: 'list' object has no attribute
    'keys'``); every release since 4.44 reads them as ``additional_special_tokens``."""
    if not path.is_file():
        return
    content = json.loads(path.read_text(encoding="utf-8"))
    extra = content.get("extra_special_tokens")
    if not isinstance(extra, list):
        return
    del content["extra_special_tokens"]
    additional = list(content.get("additional_special_tokens") or [])
    content["additional_special_tokens"] = additional + [t for t in extra if t not in additional]
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_tokenizer(text_encoder: TextEncoder, folder: Path) -> None:
    """The tokenizer loads from the files in ``folder`` and tokenizes :data:`PROMPT` as the
    source does, and so does the sentencepiece vocabulary there (``spiece.model``)."""
    import transformers

    try:
        expected = _ids(text_encoder.tokenizer(PROMPT)["input_ids"])
        pieces = _ids(text_encoder.tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    except Exception as exc:  # a tokenizer built from a user's files fails its own way
        raise ExportError(f"the tokenizer of {text_encoder.origin} cannot tokenize {PROMPT!r} "
                          f"({type(exc).__name__}: {first_line(exc)})") from exc
    try:
        written = _ids(transformers.AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"])
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise ExportError(f"the tokenizer files taken from {text_encoder.origin} do not load "
                          f"({first_line(exc)})") from exc
    if written != expected:
        raise ExportError(f"the tokenizer files taken from {text_encoder.origin} tokenize "
                          f"{PROMPT!r} as {_few(written)}, its tokenizer as {_few(expected)}")
    if (folder / "spiece.model").is_file():
        _check_sentencepiece(folder / "spiece.model", pieces, text_encoder.origin)


def _check_sentencepiece(path: Path, expected: list[int], origin: str) -> None:
    import sentencepiece

    try:
        vocabulary = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        pieces = _ids(vocabulary.encode(PROMPT))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ExportError(f"spiece.model of {origin} is no sentencepiece vocabulary "
                          f"({first_line(exc)})") from exc
    if pieces != expected:
        raise ExportError(f"spiece.model of {origin} tokenizes {PROMPT!r} as {_few(pieces)}, "
                          f"its tokenizer as {_few(expected)}")


def _ids(ids: Any) -> list[int]:
    return [int(i) for i in ids]


def _few(ids: Sequence[int]) -> str:
    return str(list(ids[:8]))[:-1] + (", ...]" if len(ids) > 8 else "]")
