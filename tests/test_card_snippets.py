"""Every Python snippet of a generated model card runs as pasted, from the folder that holds
the release (the path the card writes resolves there)."""

import re

import pytest

from audiocraft_ext import export_release
from audiocraft_ext.config import ValidateConfig

FENCED_PYTHON = re.compile(r"^(`{3,})python\n(.*?)^\1$", re.M | re.S)


def python_snippets(card: str) -> list[str]:
    return [match.group(2) for match in FENCED_PYTHON.finditer(card)]


@pytest.mark.parametrize("fixture", ["musicgen_ckpt", "encodec_ckpt"])
def test_card_snippets_run_as_pasted(fixture, request, tmp_path, monkeypatch):
    dest = tmp_path / "releases" / "mine"
    # a short validate.duration: the LM snippet generates what samples/ holds, that long
    export_release(request.getfixturevalue(fixture), dest,
                   validate=ValidateConfig(duration=0.25))
    snippets = python_snippets((dest / "README.md").read_text())
    assert snippets, "the card shows no Python snippet"
    monkeypatch.chdir(dest.parent)  # the card names the release by its folder's name
    for snippet in snippets:
        namespace: dict = {"__name__": "__card__"}
        exec(compile(snippet, "README.md", "exec"), namespace)
        assert ("wav" in namespace) or ("audio" in namespace)


def test_the_snippet_of_a_model_get_pretrained_refuses_runs(musicgen_xp, tmp_path,
                                                            monkeypatch):
    """Trained on 5 s segments: the card builds the model from the loaders instead."""
    dest = tmp_path / "short"
    export_release(musicgen_xp("dataset.segment_duration=5"), dest, validate="load",
                   samples=False)
    (snippet,) = python_snippets((dest / "README.md").read_text())
    assert "get_pretrained(" not in snippet and "max_duration=30" in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["wav"].shape[:2] == (1, 1)


def test_the_encodec_snippet_round_trips_its_own_audio(encodec_ckpt, tmp_path, monkeypatch):
    dest = tmp_path / "enc"
    export_release(encodec_ckpt, dest, validate=ValidateConfig(duration=0.25))
    (snippet,) = python_snippets((dest / "README.md").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["audio"].shape[:2] == namespace["wav"].shape[:2]


def test_python_snippets_are_found_in_longer_fences():
    card = "x\n````python\nprint('```')\n````\n```bash\nls\n```\n```python\na = 1\n```\n"
    assert python_snippets(card) == ["print('```')\n", "a = 1\n"]


def test_the_fine_tune_recipe_says_it_needs_the_source_tree(musicgen_ckpt, tmp_path):
    dest = tmp_path / "rel"
    export_release(musicgen_ckpt, dest, validate="none")
    card = (dest / "README.md").read_text()
    assert "MissingConfigException" in card and "`config/`" in card
    assert "git clone --branch v" in card and "pip download --no-binary :all:" in card


@pytest.mark.parametrize("name,says", [
    ("debug_compression_model", "random weights"),
    ("dac_44khz", "Descript's DAC"),
    ("facebook/encodec_32khz", "from the Hugging Face Hub"),
])
def test_pointer_compression_models_are_described_truthfully(name, says):
    from audiocraft_ext.reporting.model_card import pointer_note

    assert says in pointer_note(name)
    if name == "debug_compression_model":
        assert "not a download" in pointer_note(name)
