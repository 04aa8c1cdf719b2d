"""The fine-tuning recipe of the model card, run for real: audiocraft's own training (`dora
run` from the sdist, as scripts/train_fixtures.py runs it) continues from an exported release
of a real XP, with the command audiocraft_ext.reporting.finetune builds. The tests that train
use the `real_xps` fixture, which marks them slow."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiocraft_ext.reporting.finetune import finetune_command, solver_config
from scripts import train_fixtures  # its environment and XP lookup, reused, never copied
from tests.support.helpers import assert_same_state, release_state, run_app, torch_load

# the fixture XP trained 2 epochs x 2 updates with epoch checkpoints; one epoch is enough here
SHORTENED = ("optim.epochs", "optim.updates_per_epoch", "checkpoint.save_every")
ONE_EPOCH = ["optim.epochs=1", "optim.updates_per_epoch=2"]


@pytest.fixture(scope="module")
def release(real_xps, tmp_path_factory) -> Path:
    """The fixture's MusicGen XP, exported with the app."""
    work = tmp_path_factory.mktemp("finetune-release")
    xp = real_xps["xps"]["musicgen"]
    run_app("input=xp", f"input.dora_dir={real_xps['dora_dir']}", f"input.sig={xp['sig']}",
            "validate=none", f"output.dir={work / 'release'}", f"hydra.run.dir={work / 'run'}",
            cwd=work, check=True)
    return work / "release"


def _finetune(real_xps: dict, release: Path, work: Path, *extra: str) -> tuple[Path, str]:
    """Run the recipe for one epoch in a Dora dir of its own (the fixtures' one, which holds
    the //sig/ compression model the release's xp.cfg names, is not reachable from it).
    Return the new XP folder and the run's output."""
    xp = real_xps["xps"]["musicgen"]
    src = Path(real_xps["sdist_dir"])
    env = train_fixtures.child_env(work, src, train_fixtures.ffmpeg_bin_dir(work))
    # The fixtures need this on torch >= 2.6 to read their //sig/ checkpoints (pickled
    # configs); the recipe reads only the release, which must load under the default,
    # weights_only=True.
    del env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    overrides = [o for o in xp["overrides"] if o.split("=", 1)[0] not in SHORTENED]
    solver = solver_config(xp["overrides"])
    assert solver == xp["solver"] == "musicgen/debug"
    argv = finetune_command(str(release), solver, [*overrides, *ONE_EPOCH, *extra])
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "dora", "-P", "audiocraft", "run", *argv],
                          cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    folder = train_fixtures.find_xp(Path(env["AUDIOCRAFT_DORA_DIR"]), argv, started)
    assert folder is not None and (folder / "checkpoint.th").is_file(), proc.stdout[-4000:]
    return folder, proc.stdout


def _model_hash(state: dict[str, torch.Tensor]) -> str:
    """audiocraft's utils.model_hash of a model holding ``state``: sha1 over its parameters'
    float32 bytes, in order (the LM has no buffers: its state dict is its parameters)."""
    hasher = hashlib.sha1()
    for tensor in state.values():
        hasher.update(tensor.float().numpy().tobytes())
    return hasher.hexdigest()


def test_command_replaces_the_xps_own_references():
    argv = finetune_command("/r/rel/", "musicgen/debug", [
        "solver=musicgen/debug", "dset=audio/x", "compression_model_checkpoint=//sig/abc",
        "+continue_from=//sig/def", "transformer_lm.card=400"])
    assert argv == ["solver=musicgen/debug", "dset=audio/x", "transformer_lm.card=400",
                    "continue_from=//pretrained//r/rel",
                    "compression_model_checkpoint=//pretrained//r/rel/compression_state_dict.bin"]
    assert solver_config(["dset=a", "solver=a/b", "solver=c/d"]) == "c/d"
    assert solver_config(["dset=a"]) is None


def test_finetuning_trains_from_the_release(real_xps, release, tmp_path):
    fixture_xps = sorted(p.name for p in (Path(real_xps["dora_dir"]) / "xps").iterdir())
    folder, log = _finetune(real_xps, release, tmp_path)
    assert "Loading a pretrained model" in log
    assert "//sig/" not in log  # neither the LM nor its compression model came from an XP
    # the solver logs its model's hash when built (random init), once the checkpoint is
    # restored, and when it saves: the restored model is the release
    built, restored, saved = re.findall(r"Model hash: ([0-9a-f]{40})", log)
    shipped = release_state(release / "state_dict.bin")
    assert restored == _model_hash(shipped) != built
    trained = torch_load(folder / "checkpoint.th")
    assert saved == _model_hash(trained["model"]) != restored  # the updates changed it
    assert len(trained["history"]) == 1
    assert sorted(p.name for p in (Path(real_xps["dora_dir"]) / "xps").iterdir()) == fixture_xps


def test_finetuning_starts_from_the_release_weights(real_xps, release, tmp_path):
    """With a learning rate of 0 the updates run and change nothing: the trained model is the
    release's weights, bit for bit. Training keeps float32 weights; the release holds the
    bfloat16 best state, which float32 holds exactly, so the cast back must give it."""
    folder, _ = _finetune(real_xps, release, tmp_path, "optim.lr=0")
    trained = torch_load(folder / "checkpoint.th")
    shipped = release_state(release / "state_dict.bin")
    assert {t.dtype for t in trained["model"].values()} == {torch.float32}
    assert_same_state({k: t.to(shipped[k].dtype) for k, t in trained["model"].items()}, shipped)
    assert_same_state(trained["best_state"]["model"], shipped)  # kept in autocast's bfloat16
    assert trained["history"][0]["train"]["lr"] == 0
    assert all(s["step"] == 2 for s in trained["optimizer"]["state"].values())  # it did update


def test_the_model_card_publishes_the_tested_command(real_xps, release):
    """The card's command, with the shell's $PWD filled in as it would be in the folder
    holding the release, is the one finetune_command builds from the XP's own argv: the
    command the tests above run (less their shortening of the training)."""
    card = (release / "README.md").read_text()
    [line] = [line for line in card.splitlines() if line.startswith("dora -P audiocraft run ")]
    xp = real_xps["xps"]["musicgen"]
    words = shlex.split(line.replace("$PWD", str(release.parent)))
    assert words == ["dora", "-P", "audiocraft", "run",
                     *finetune_command(str(release), xp["solver"], xp["overrides"])]
