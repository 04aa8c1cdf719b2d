"""The recorded-paths promise (``output.record_paths=relative``, the default): a release records
the paths it was made from relative to the Dora dir, else by their last component, so that
sharing it shares nothing of the machine that made it: no home folder (however it is spelt),
no user name, no host name; and the ``xp.cfg`` it carries still loads with OmegaConf.

Each leak an attacker's review found is a unit case of ``PathRecorder`` (in process, no
checkpoint); one export under a fake home then greps every byte of every released file."""

from __future__ import annotations

import json
import re
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from audiocraft_ext.errors import ExportError
from audiocraft_ext.writing.recorded_paths import DORA_DIR_VARIABLE, REQUIRED, PathRecorder

USER = "zq7user"  # a user name no real file holds by chance


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home folder, <tmp>/home/zq7user, made $HOME as given."""
    folder = tmp_path / "home" / USER
    folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("DATA", raising=False)
    return folder


@pytest.fixture
def link(home: Path, tmp_path: Path) -> Path:
    """A symbolic link to the fake home (HOME reached through it, or values written with it)."""
    path = tmp_path / "homelink"
    path.symlink_to(home, target_is_directory=True)
    return path


# ---- a home path used as a dict key -----------------------------------------------------------

def test_a_home_path_as_a_key_is_recorded_like_a_value(home):
    recorder = PathRecorder(home / "dora")
    text = OmegaConf.to_yaml({"weights": {f"{home}/data/a.jsonl": 0.5, "b": 0.5},
                              f"{home}/dora/xps/abc": {"source": f"{home}/raw"}})
    recorded, changed = recorder.yaml_config(text)
    assert OmegaConf.to_container(OmegaConf.create(recorded)) == {
        "weights": {"a.jsonl": 0.5, "b": 0.5}, "xps/abc": {"source": "raw"}}
    # the keys changed, as recorded: the manifest lists them (paths_recorded)
    assert changed == ["weights.a.jsonl", "xps/abc", "xps/abc.source"]
    assert str(home) not in recorded and USER not in recorded


def test_keys_of_overrides_are_recorded(home):
    assert PathRecorder(None).overrides([f"+{home}/k=1", f"{home}/flag"]) == [
        "+~/k=1", "flag"]
    assert PathRecorder(None).overrides([f"a.[{home}/k]=1"]) == ["a.[~/k]=1"]


def test_two_keys_recorded_alike_are_an_error_not_a_silent_merge(home):
    with pytest.raises(ExportError, match=r"^cannot record the paths of 'w': its keys "
                       r"'/\S+/data' and another would both be recorded as 'data' "
                       r"\(record_paths='absolute' keeps them as given\)$"):
        PathRecorder(None).values({"w": {"data": 1, f"{home}/data": 2}})


# ---- the home folder itself -------------------------------------------------------------------

@pytest.mark.parametrize("written", ["{home}", "{home}/", "~", "{home}/sub/.."])
def test_the_home_folder_itself_is_recorded_as_tilde_not_as_the_user_name(home, written):
    value = written.format(home=home)
    assert PathRecorder(None).path(value) == "~"
    assert PathRecorder(None).values({"h": value}) == {"h": "~"}
    # a config to re-run asks for it again, as for any path outside the Dora dir
    assert PathRecorder(None, rerunnable=True).path(value) == REQUIRED
    assert PathRecorder(None, absolute=True).path(value) == value


def test_a_name_that_only_begins_like_the_home_is_not_the_home(home):
    other = f"{home}2"
    assert PathRecorder(None).path(other) == f"{USER}2"  # another folder: its last component
    assert PathRecorder(None).values({"l": f"[{other}/a,{home}/b]"}) == {
        "l": f"[{other}/a,~/b]"}


# ---- HOME through a symbolic link, or values through one --------------------------------------

def _both_ways(home: Path, link: Path) -> Iterator[tuple[Path, Path]]:
    yield link, home  # $HOME is the link, the config names the real folder
    yield home, link  # $HOME is the real folder, the config names the link


@pytest.mark.parametrize("way", [0, 1], ids=["HOME-is-a-link", "value-through-a-link"])
def test_the_home_is_found_through_a_symbolic_link_both_ways(home, link, monkeypatch, way):
    env_home, written = list(_both_ways(home, link))[way]
    monkeypatch.setenv("HOME", str(env_home))
    recorder = PathRecorder(home / "dora")
    values = {"list": f"[{written}/a,{written}/b]",
              "template": f"{written}/data/${{oc.env:USER}}/train.jsonl",
              "plain": f"{written}/data/train.jsonl",
              "itself": str(written),
              "in_dora": f"{written}/dora/xps/abc/checkpoint.th",
              f"{written}/key": 1}
    changed: list[str] = []
    recorded = recorder.values(values, changed)
    assert recorded == {"list": "[~/a,~/b]", "template": "train.jsonl",
                        "plain": "train.jsonl", "itself": "~",
                        "in_dora": "xps/abc/checkpoint.th", "key": 1}
    assert sorted(changed) == sorted(recorded)
    assert recorder.overrides([f"dset.train=[{written}/a]", f"x={written}"]) == [
        "dset.train=[~/a]", "x=~"]
    assert recorder.path(Path(written) / "dora" / "xps" / "abc") == "xps/abc"
    rerun = PathRecorder(home / "dora", rerunnable=True)
    assert rerun.path(f"{written}/dora/xps/abc") == f"{DORA_DIR_VARIABLE}/xps/abc"


# ---- an interpolation's default naming the home folder ----------------------------------------

# (written under the home, recorded) for `${oc.env:DATA,<written>}` and kin; {h} is the home
DEFAULTS = [
    ("${{oc.env:DATA,{h}/d}}", "${{oc.env:DATA,'~/d'}}"),
    ("${{oc.env:DATA, {h}/d }}", "${{oc.env:DATA, '~/d' }}"),
    ("${{oc.env:DATA,{h}}}", "${{oc.env:DATA,'~'}}"),
    ("${{oc.env:DATA,{h}/a\\,b}}", "${{oc.env:DATA,'~/a,b'}}"),
    ("${{oc.env:DATA,{h}/a\\\\}}", "${{oc.env:DATA,'~/a\\\\'}}"),
    ("${{oc.env:DATA,{h}/$\\{{x\\}}}}", "${{oc.env:DATA,'~/\\${{x}}'}}"),
    ("${{oc.env:DATA,{h}/${{oc.env:PART,p}}/d}}", "${{oc.env:DATA,'~/${{oc.env:PART,p}}/d'}}"),
    ("${{oc.env:DATA,${{oc.env:MORE,{h}/m}}}}", "${{oc.env:DATA,${{oc.env:MORE,'~/m'}}}}"),
    ("${{oc.env:DATA,'{h}/quoted'}}", "${{oc.env:DATA,'~/quoted'}}"),
    ("x-${{oc.env:DATA,[{h}/a, b]}}", "x-${{oc.env:DATA,['~/a', b]}}"),
]


@pytest.mark.parametrize(("written", "expected"), DEFAULTS, ids=[w for w, _ in DEFAULTS])
def test_an_interpolation_default_naming_the_home_still_parses(home, written, expected):
    value = written.format(h=home)
    recorded = PathRecorder(None).values({"v": value})["v"]
    assert recorded == expected.format()
    # the release's xp.cfg loads and resolves (DATA unset: the default is used) to what the
    # checkpoint's resolves to, with the home folder written ~
    text, changed = PathRecorder(None).yaml_config(OmegaConf.to_yaml({"v": value}))
    assert changed == ["v"] and str(home) not in text
    before = OmegaConf.create({"v": value})
    after = OmegaConf.create(text)
    assert after.v == str(before.v).replace(str(home), "~")


def test_an_absolute_path_holding_an_interpolation_is_cut_outside_it(home):
    """Its last component is what follows the last / outside every interpolation."""
    value = f"{home}/x/${{oc.env:SUB,{home}/e}}"
    recorded = PathRecorder(None).values({"v": value})["v"]
    assert recorded == "${oc.env:SUB,'~/e'}"
    assert OmegaConf.create({"v": recorded}).v == "~/e"


def test_an_interpolation_default_through_a_symbolic_link(home, link, monkeypatch):
    for env_home, written in _both_ways(home, link):
        monkeypatch.setenv("HOME", str(env_home))
        text, _ = PathRecorder(None).yaml_config(
            OmegaConf.to_yaml({"v": f"${{oc.env:DATA,{written}/d}}"}))
        assert OmegaConf.create(text).v == "~/d"


def test_interpolations_without_the_home_stay_as_written(home):
    recorder = PathRecorder(home / "dora")
    kept = ["/checkpoint/${oc.env:USER}/x", "${oc.env:DATA,/data/d}", "${x,~/d}",
            "~/d/${oc.env:USER}"]
    assert recorder.values(kept) == kept
    # inside the Dora dir: relative to it, the interpolations untouched
    assert recorder.values([f"{home}/dora/xps/${{sig}}/c.th"]) == ["xps/${sig}/c.th"]
    assert PathRecorder(home / "dora", rerunnable=True).values(
        [f"{home}/dora/xps/${{sig}}/c.th"]) == [f"{DORA_DIR_VARIABLE}/xps/${{sig}}/c.th"]


# ---- one export under a fake home -------------------------------------------------------------

def _released_bytes(release: Path) -> Iterator[tuple[str, bytes, bool]]:
    """(name, bytes, holds tensor data) of every file of the release, and of every record,
    decompressed, of each zip file in it (the .bin files)."""
    for path in sorted(p for p in release.rglob("*") if p.is_file()):
        name = path.relative_to(release).as_posix()
        data = path.read_bytes()
        yield name, data, path.suffix in (".wav", ".png") or zipfile.is_zipfile(path)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    yield (f"{name}: {member}", archive.read(member),
                           "/data/" in f"/{member}")


def test_nothing_private_in_any_byte_of_a_release_made_under_a_fake_home(
        musicgen_ckpt, tmp_path, monkeypatch):
    """HOME is a symbolic link to <tmp>/home/zq7user; the XP's xp.cfg and .argv.json name that
    home both ways, as a key, as a value, the home itself, and in an interpolation's default.
    No byte of the release names it, the user or the host; its xp.cfg loads and resolves."""
    from audiocraft.utils.checkpoint import save_checkpoint

    from audiocraft_ext import export_release

    real = tmp_path / "home" / USER
    link = tmp_path / "homelink"
    xps = real / "dora" / "xps"
    xps.mkdir(parents=True)
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("HOME", str(link))
    for env in ("USER", "LOGNAME"):
        monkeypatch.setenv(env, USER)
    monkeypatch.delenv("DATA", raising=False)
    for xp in musicgen_ckpt.parent.parent.iterdir():  # the compression model's XP (//sig/)
        if xp != musicgen_ckpt.parent:
            (xps / xp.name).symlink_to(xp)
    pkg = torch.load(musicgen_ckpt, map_location="cpu", weights_only=False)
    with open_dict(pkg["xp.cfg"]):
        pkg["xp.cfg"].datasource = {
            "train": f"{real}/data/train.jsonl",            # a value under the home
            "home": str(real),                              # the home folder itself
            "valid": f"{link}/data/valid.jsonl",            # through the symbolic link
            "cache": f"{real}/cache/${{oc.env:USER}}",      # an interpolation spelling it out
            "extra": f"${{oc.env:DATA,{real}/d}}",          # an interpolation's default
            "weights": {f"{real}/data/a.jsonl": 0.7,        # keys
                        f"{link}/data/b.jsonl": 0.3}}
        # a T5 given as a local folder: the card and the manifest name the model by it
        pkg["xp.cfg"].conditioners.description = {
            "model": "t5", "t5": {"name": f"{real}/models/t5-base", "finetune": False}}
    ckpt = xps / "zq7sig" / "checkpoint.th"
    ckpt.parent.mkdir()
    save_checkpoint(pkg, ckpt)
    (ckpt.parent / ".argv.json").write_text(json.dumps([
        "solver=musicgen/debug", f"dset.train=[{real}/a,{link}/b]", f"datasource.home={link}",
        f"datasource.extra=${{oc.env:DATA,{real}/d}}"]))
    source = ckpt.read_bytes()
    privates = [str(real), str(link), USER]
    assert all(p.encode() in source for p in (str(real), str(link)))  # the test is not vacuous

    dest = tmp_path / "out" / "release"
    result = export_release(ckpt, dest, validate="none")

    host = socket.gethostname()
    checked = []
    for name, data, tensor_data in _released_bytes(dest):
        checked.append(name)
        for private in privates:
            assert private.encode() not in data, (name, private)
        # a short host name ("vm") occurs by chance in tensor bytes: there, only a long one
        if host and (len(host) >= 8 or not tensor_data):
            assert not re.search(rb"(?<![\w.-])" + re.escape(host.encode()) + rb"(?![\w-])",
                                 data), (name, host)
    assert {"README.md", "export.json", "state_dict.bin", "compression_state_dict.bin"} \
        <= set(checked)
    assert any(n.startswith("state_dict.bin: ") and n.endswith("data.pkl") for n in checked)

    assert result.manifest.model is not None
    assert result.manifest.model.conditioners == {"description": "t5 (t5-base)"}
    xp_cfg = torch.load(dest / "state_dict.bin", weights_only=True)["xp.cfg"]
    cfg = OmegaConf.create(xp_cfg)
    # ("cache" keeps its ${oc.env:USER}: resolved here, with this test's USER)
    assert OmegaConf.to_container(cfg.datasource, resolve=True) == {
        "train": "train.jsonl", "home": "~", "valid": "valid.jsonl", "cache": USER,
        "extra": "~/d", "weights": {"a.jsonl": 0.7, "b.jsonl": 0.3}}
    assert OmegaConf.to_container(cfg.datasource)["extra"] == "${oc.env:DATA,'~/d'}"
    OmegaConf.to_container(cfg, resolve=True)  # the whole config resolves here
    manifest = result.manifest
    assert manifest.source.path == "xps/zq7sig/checkpoint.th"
    assert manifest.source.argv == ["solver=musicgen/debug", "dset.train=[~/a,~/b]",
                                    "datasource.home=~",
                                    "datasource.extra=${oc.env:DATA,'~/d'}"]
    assert sorted(manifest.paths_recorded) == [
        "state_dict.bin: conditioners.description.t5.name",
        *(f"state_dict.bin: datasource.{key}" for key in (
            "cache", "extra", "home", "train", "valid", "weights.a.jsonl", "weights.b.jsonl"))]
