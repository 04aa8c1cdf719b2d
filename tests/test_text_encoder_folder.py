"""output.text_encoder=<folder>: only a T5's own files, regular and of sensible sizes, checked
by loading them, are taken into a release.

The folders are real: the snapshot of the tiny T5 (scripts/tiny_t5.py) copied, then spoiled
one way each. The LM is a demo XP made to hold what a T5-conditioned MusicGen holds (its
conditioner declared as a frozen t5-small, the state with only the 512 -> dim projection;
card 512 on an EnCodec of 512 bins), exported in process with ``validate=none``: transformers'
files are written (and their tokenizer checked) whatever the level, and no model of audiocraft
needs T5 by name.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from audiocraft_ext import export_release
from audiocraft_ext.errors import ExportError
from audiocraft_ext.transformers_format.text_encoder import FOLDER_FILES


@pytest.fixture
def t5_folder(tiny_t5_home, tmp_path) -> Path:
    """A copy of the tiny T5's snapshot: a valid text encoder folder."""
    [snapshot] = (tiny_t5_home / "hub" / "models--t5-small" / "snapshots").iterdir()
    folder = tmp_path / "t5"
    shutil.copytree(snapshot, folder)
    return folder


def _export(t5_lm: Path, folder: Path, out: Path):
    return export_release(t5_lm, out, validate="none", transformers=True,
                          text_encoder=str(folder))


def test_a_t5_folder_gives_the_release_its_tokenizer(t5_lm, t5_folder, tmp_path):
    import transformers

    out = tmp_path / "release"
    _export(t5_lm, t5_folder, out)
    assert (out / "spiece.model").read_bytes() == (t5_folder / "spiece.model").read_bytes()
    assert not (out / "spiece.model").is_symlink()
    source = transformers.AutoTokenizer.from_pretrained(t5_folder)
    released = transformers.AutoTokenizer.from_pretrained(out)
    prompt = "warm lo-fi piano"
    assert released(prompt)["input_ids"] == source(prompt)["input_ids"]
    assert str(tmp_path) not in (out / "config.json").read_text()  # no path of this machine


def _spoiled(folder: Path, how: str) -> str:
    """Spoil ``folder`` one way; return the line its export is refused with."""
    spiece = folder / "spiece.model"
    if how == "symlink":
        spiece.unlink()
        spiece.symlink_to("/etc/passwd")
        return (f"{spiece} is a symbolic link (to '/etc/passwd'): the text encoder's folder "
                "must hold regular files (copy them there, or leave text_encoder unset "
                "to read the Hugging Face cache)")
    if how == "inner_symlink":  # even to a file of the folder: regular files only
        shutil.move(spiece, folder / "added_tokens.json")
        spiece.symlink_to("added_tokens.json")
        return (f"{spiece} is a symbolic link (to 'added_tokens.json'): the text encoder's "
                "folder must hold regular files")
    if how == "oversized":
        with open(spiece, "r+b") as f:
            f.truncate(700 << 20)  # 700 MB of junk after the vocabulary (sparse: no disk)
        return (f"{spiece} is 734,003,200 bytes, more than the 8,388,608 accepted for T5's "
                "sentencepiece vocabulary (0.8 MB)")
    if how == "extra_file":
        (folder / "pytorch_model.bin").write_bytes(b"a pickle, never to be read")
        return (f"{folder} holds 'pytorch_model.bin', which is not a file of a T5 text encoder "
                f"(accepted: {', '.join(FOLDER_FILES)}, model-NNNNN-of-NNNNN.safetensors)")
    if how == "subfolder":
        (folder / "tokenizer.json").unlink()
        (folder / "tokenizer.json").mkdir()
        return f"{folder / 'tokenizer.json'} is not a regular file"
    if how == "fifo":
        (folder / "added_tokens.json").unlink(missing_ok=True)
        os.mkfifo(folder / "added_tokens.json")
        return f"{folder / 'added_tokens.json'} is not a regular file"
    if how == "giant_config":  # built before transformers compares it with the weights
        config = folder / "config.json"
        config.write_text(config.read_text().replace('"num_layers": 2', '"num_layers": 20000'))
        return (f"{config} says num_layers=20000 but its weights make it 2: refusing to build "
                "that T5")
    if how == "corrupt":
        spiece.write_bytes(os.urandom(4096))
        return f"spiece.model of {folder} is no sentencepiece vocabulary (INTERNAL: "
    if how == "other_vocabulary":  # a real sentencepiece model, not the tokenizer's
        import sentencepiece

        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["drums and bass with a lot of reverb"] * 50 + [
                "quiet strings, slow and sad", "a choir sings over an organ"] * 50),
            model_writer=model, vocab_size=30, model_type="unigram")
        spiece.write_bytes(model.getvalue())
        return (f"spiece.model of {folder} tokenizes 'warm lo-fi piano with soft drums, 90 BPM; "
                "rain & vinyl crackle' as [")
    raise ValueError(how)


@pytest.mark.parametrize("how", ["symlink", "inner_symlink", "oversized", "extra_file",
                                 "subfolder", "fifo", "giant_config", "corrupt",
                                 "other_vocabulary"])
def test_a_spoiled_folder_is_refused_and_nothing_published(t5_lm, t5_folder, tmp_path, how):
    line = _spoiled(t5_folder, how)
    out = tmp_path / "out" / "release"
    with pytest.raises(ExportError) as info:
        _export(t5_lm, t5_folder, out)
    assert str(info.value).startswith(line), str(info.value)
    assert "\n" not in str(info.value)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_text_encoder_that_is_not_a_folder_is_refused(t5_lm, tmp_path):
    with pytest.raises(ExportError, match=r"^text_encoder='.*nowhere': not a folder"):
        _export(t5_lm, tmp_path / "nowhere", tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_a_tokenizer_config_that_breaks_the_tokenizer_is_one_line(t5_lm, t5_folder, tmp_path):
    """Found by the surface fuzzer: a string model_max_length makes transformers' tokenizer
    raise TypeError when called; refused in one line, nothing published."""
    path = t5_folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": "x"}))
    with pytest.raises(ExportError, match=r"^the tokenizer of .*/t5 cannot tokenize .*"
                                          r"\(TypeError: "):
        _export(t5_lm, t5_folder, tmp_path / "rel")
    assert not (tmp_path / "rel").exists()
