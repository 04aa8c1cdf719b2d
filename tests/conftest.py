"""Fixtures (tiny real AudioCraft XPs written the way the solvers write them, the app's
composed config, a refused command, a network guard) and the hook that marks slow tests.
Helpers live in tests/support/.

Slow tests (left out by `make test-fast`) are marked one way: ``@pytest.mark.slow`` on the
test or its parametrized case (``pytestmark`` for a whole file), with the reason in a comment
or the docstring. The one automatic rule is the hook below: a test that uses a fixture of
``SLOW_FIXTURES`` or is marked ``slurm`` is marked slow whatever its file says, so that a new
one cannot forget the mark. Unknown marks are errors (``--strict-markers``).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from audiocraft_ext.app.config_store import register_configs
from audiocraft_ext.app.demo import write_encodec_xp, write_musicgen_xp
from tests.support.app_cases import refused_in_process, rejected
from tests.support.helpers import (
    OFFLINE,
    ONNX_FRAMES,
    ROOT,
    app_env,
    as_task_config,
    run_app,
    torch_load,
)

torch.set_num_threads(1)

# real XPs trained by audiocraft's own training (scripts/train_fixtures.py): minutes on a first
# run, then cached
SLOW_FIXTURES = {"real_xps"}


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker (-m)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & SLOW_FIXTURES or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def dora_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dora")


@pytest.fixture(scope="session")
def encodec_ckpt(dora_dir) -> Path:
    return write_encodec_xp(dora_dir)


@pytest.fixture(scope="session")
def musicgen_xp(dora_dir, encodec_ckpt) -> Callable[..., Path]:
    """Write (once per set of overrides) a MusicGen XP trained against ``encodec_ckpt``."""
    cache: dict[tuple, Path] = {}

    def make(*overrides: str, compression: str | None = None) -> Path:
        key = (overrides, compression)
        if key not in cache:
            ref = compression or f"//sig/{encodec_ckpt.parent.name}"
            cache[key] = write_musicgen_xp(dora_dir, ref, overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def musicgen_ckpt(musicgen_xp) -> Path:
    return musicgen_xp()


@pytest.fixture(scope="session")
def derived_ckpt(musicgen_ckpt, tmp_path_factory) -> Callable[..., Path]:
    """A copy of the MusicGen XP's checkpoint, edited by ``edit(pkg)`` and re-saved with
    audiocraft's checkpoint writer, in a Dora dir of its own that shares the compression model
    XP."""
    from audiocraft.utils.checkpoint import save_checkpoint

    def make(name: str, edit: Callable[[dict], None]) -> Path:
        pkg = torch_load(musicgen_ckpt)
        edit(pkg)
        path = musicgen_ckpt.parent.parent / f"{musicgen_ckpt.parent.name}-{name}" / "checkpoint.th"
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(pkg, path)
        return path

    return make


@pytest.fixture(scope="session")
def fsdp_ckpt(derived_ckpt) -> Path:
    """rank 0 of an FSDP run: fsdp_best_state holds the full model, unlike best_state."""
    def edit(pkg: dict) -> None:
        full = {k: v.clone() + 1 if v.is_floating_point() else v.clone()
                for k, v in pkg["best_state"]["model"].items()}
        pkg["fsdp_best_state"] = {"model": full}
    return derived_ckpt("fsdp", edit)


@pytest.fixture(scope="session")
def plain_cfg_ckpt(derived_ckpt) -> Path:
    """xp.cfg made with OmegaConf.create instead of hydra.compose."""
    def edit(pkg: dict) -> None:
        pkg["xp.cfg"] = OmegaConf.create(OmegaConf.to_container(pkg["xp.cfg"]))
    return derived_ckpt("plaincfg", edit)


@pytest.fixture(scope="session")
def no_best_ckpt(derived_ckpt) -> Path:
    def edit(pkg: dict) -> None:
        pkg["best_state"] = {}
        pkg["fsdp_best_state"] = {}
    return derived_ckpt("nobest", edit)


@pytest.fixture(scope="session")
def t5_ckpt(derived_ckpt) -> Path:
    """The MusicGen XP with its text conditioner changed to T5 't5-base' in xp.cfg (the state
    no longer matches: building the LM, which loads T5 through transformers, fails first)."""
    def edit(pkg: dict) -> None:
        with open_dict(pkg["xp.cfg"]):
            pkg["xp.cfg"].conditioners.description = {
                "model": "t5", "t5": {"name": "t5-base", "finetune": False,
                                      "word_dropout": 0.0, "normalize_text": False}}
    return derived_ckpt("t5", edit)


@pytest.fixture(scope="session")
def tiny_t5_home() -> Path:
    """An HF_HOME folder whose hub cache holds a tiny but real T5 named `t5-small` (random
    weights, a locally trained vocabulary): with HF_HUB_OFFLINE=1 transformers and audiocraft's
    T5Conditioner load it by name. Built once, then cached by scripts/tiny_t5.py."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_t5.py")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"building the tiny T5 failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_demucs_home() -> Path:
    """A TORCH_HOME folder whose torch.hub cache holds a tiny but real htdemucs (random
    weights) under the file name demucs fetches: AudioCraft's melody conditioner loads it
    offline. Built once, then cached by scripts/tiny_demucs.py."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_demucs.py")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"building the tiny htdemucs failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def real_xps() -> dict:
    """XPs written by audiocraft's own training entry point (`dora run` on CPU): an EnCodec
    XP, MusicGen (with epoch checkpoints), MusicGen with EMA, AudioGen (and its 16 kHz
    EnCodec), MAGNeT, and the layout transformers can represent: `musicgen_t5` and
    `audiogen_t5` (T5 `t5-small` from the tiny T5, delay pattern, card 512) on `encodec512`
    and `encodec16_512`; `musicgen_stereo` (interleaved codebooks over `encodec16_512`) and
    `musicgen_melody` (chroma2music: chroma of the tiny htdemucs' stems and T5). Trained
    once, then cached by scripts/train_fixtures.py."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_fixtures.py")],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"training the fixture XPs failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """``compose(*overrides)``: the app's config composed from conf/ and the registered
    schemas, as export_app.py's @hydra.main composes it (``hydra=True`` keeps the hydra node)."""
    register_configs()

    def compose_(*overrides: str, hydra: bool = False) -> DictConfig:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="export", overrides=list(overrides),
                           return_hydra_config=hydra)

    return compose_


@pytest.fixture
def job_config(compose_config) -> Iterator[Callable[..., DictConfig]]:
    """``job_config(*overrides)``: the config a task function receives from @hydra.main, with
    HydraConfig set as @hydra.main sets it (unset again after the test)."""
    def make(*overrides: str) -> DictConfig:
        return as_task_config(compose_config(*overrides, hydra=True))

    yield make
    HydraConfig.instance().cfg = None


@pytest.fixture
def refused(request, job_config, capsys, monkeypatch) -> Callable[..., str]:
    """``refused(tmp_path, *overrides, message=..., keep=(), setenv=None, dest=None, cwd=None)``:
    the app, run from ``cwd`` (default: tmp) with the variables ``setenv`` added to its
    environment, refuses to export towards ``dest`` (default: tmp/out/release) with one line
    matching ``message``, and tmp/out holds nothing but ``keep``. Returns the line.

    Checked in process (``refused_in_process``, and nothing printed on stdout): a rule costs
    what reading its checkpoint costs. A case marked ``through_app`` (one per family) runs
    the command through export_app.py in a fresh process instead (``rejected``), which shows
    what only a process can: exit status 1, one [ERROR] line, no traceback."""
    through_app = request.node.get_closest_marker("through_app") is not None

    def check(tmp_path: Path, *overrides: str, message: str, keep: tuple = (),
              setenv: dict[str, str] | None = None, dest: Path | str | None = None,
              cwd: Path | None = None) -> str:
        if through_app:
            return rejected(tmp_path, *overrides, message=message, keep=keep, dest=dest,
                            cwd=cwd, env=app_env(**(setenv or {})))
        for name, value in (setenv or {}).items():
            monkeypatch.setenv(name, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        line = refused_in_process(job_config, tmp_path, *overrides, message=message, keep=keep,
                                  dest=dest)
        assert capsys.readouterr().out == ""
        return line

    return check


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Refuse (and record) every connection to the network for the test's duration; local
    sockets still work. The test asserts the list stays empty."""
    attempts: list = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network disabled by the test: connect to {address!r}")
        connect(sock, address)

    def no_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"network disabled by the test: lookup of {host!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return attempts


@pytest.fixture(scope="session")
def t5_lm_xp(tmp_path_factory) -> Callable[..., Path]:
    """``t5_lm_xp(*overrides)``: a demo MusicGen made to hold what a T5-conditioned MusicGen
    holds, in the layout transformers' Musicgen represents: its conditioner declared as a
    frozen t5-small, the state with only the 512 -> dim projection, card 512 (9 bits: 4
    codebooks fit transformers 4.44's and 5.x's bandwidth rules at once) on an EnCodec of 512
    bins; ``overrides`` change the LM further (written once per set)."""
    cache: dict[tuple[str, ...], Path] = {}

    def make(*overrides: str) -> Path:
        if overrides in cache:
            return cache[overrides]
        dora = tmp_path_factory.mktemp("dora")
        encodec = write_encodec_xp(dora, ["rvq.bins=512"])
        path = write_musicgen_xp(dora, f"//sig/{encodec.parent.name}", [
            "transformer_lm.card=512", "transformer_lm.cross_attention=true",
            "conditioners.description.lut.dim=512", *overrides])
        pkg = torch.load(path, map_location="cpu", weights_only=False)
        with open_dict(pkg["xp.cfg"]):
            pkg["xp.cfg"].conditioners.description = OmegaConf.create(
                {"model": "t5", "t5": {"name": "t5-small", "finetune": False,
                                      "word_dropout": 0.0, "normalize_text": False}})
        pkg["best_state"]["model"] = {k: v for k, v in pkg["best_state"]["model"].items()
                                      if not k.endswith(".embed.weight")}  # the LUT's table
        torch.save(pkg, path)
        cache[overrides] = path
        return path

    return make


@pytest.fixture(scope="session")
def t5_lm(t5_lm_xp) -> Path:
    """:func:`t5_lm_xp`'s LM as the demo makes it."""
    return t5_lm_xp()


@pytest.fixture(scope="session")
def onnx_toolchain() -> Path:
    """The toolchain `python -m audiocraft_ext.onnx_format.toolchain` installs (from the
    package index on first use, then cached)."""
    from audiocraft_ext.onnx_format import toolchain

    return toolchain.pip_target(toolchain.folder(), toolchain.requirements(),
                                check=toolchain.IMPORT_CHECK)


@pytest.fixture(scope="session")
def onnx_release(real_xps, tiny_t5_home, onnx_toolchain, tmp_path_factory) -> Path:
    """The real musicgen_t5 XP exported with its transformers half and its ONNX graphs (8-bit
    ones too), proven over ONNX_FRAMES frames."""
    tmp = tmp_path_factory.mktemp("onnx")
    out = tmp / "release"
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}",
            f"input.sig={real_xps['xps']['musicgen_t5']['sig']}", "output.transformers=true",
            "output.onnx=true", "output.onnx_quantize=true",
            f"validate.transformers_frames={ONNX_FRAMES}", "validate.duration=0.5",
            f"output.dir={out}", f"hydra.run.dir={tmp / 'run'}", cwd=tmp,
            env=app_env(HF_HOME=str(tiny_t5_home), **OFFLINE), check=True)
    return out
