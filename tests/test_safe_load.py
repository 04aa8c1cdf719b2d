import os
import pickle

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from audiocraft_ext.errors import ExportError
from audiocraft_ext.untrusted.allowlist import PickledConfig
from audiocraft_ext.untrusted.safe_load import UnsafeCheckpointError, load_checkpoint
from audiocraft_ext.untrusted.xp_config import xp_config
from tests.support import crafted as c
from tests.support.helpers import assert_same_state, torch_load

SOLVER_KEYS = ["history", "xp.cfg", "xp.sig", "best_state", "fsdp_best_state", "model",
               "optimizer", "lr_scheduler", "ema"]


def test_loads_a_hydra_composed_solver_checkpoint(musicgen_ckpt):
    pkg = load_checkpoint(musicgen_ckpt)
    assert list(pkg) == SOLVER_KEYS
    # the config arrives as recorded data, never as omegaconf objects built from the file;
    # hydra.compose left a resolver cache in its metadata, which torch's weights_only rejects
    assert isinstance(pkg["xp.cfg"], PickledConfig)
    assert "resolver_cache" in pkg["xp.cfg"].state["_metadata"].state
    cfg = xp_config(pkg, str(musicgen_ckpt))
    assert isinstance(cfg, DictConfig) and cfg.solver == "musicgen"
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(torch_load(musicgen_ckpt)["xp.cfg"])
    assert pkg["best_state"]["model"]["emb.0.weight"].dtype == torch.float16
    assert "exp_avg" in pkg["optimizer"]["state"][0]


def test_torch_weights_only_cannot_load_it(musicgen_ckpt):
    """Why the restricted unpickler exists: torch's own safe mode refuses real XP configs."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(musicgen_ckpt, map_location="cpu", weights_only=True)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refuses_code_execution_before_running_it(tmp_path, musicgen_ckpt):
    marker = tmp_path / "pwned"
    pkg = torch_load(musicgen_ckpt)
    pkg["history"] = [{"train": {"loss": _Payload(marker)}}]
    path = tmp_path / "evil.th"
    torch.save(pkg, path)
    with pytest.raises(UnsafeCheckpointError, match=r"references os\.system, which is not "
                                                    r"allowed in a checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_legacy_non_zip_format_is_read_only_when_trusted(tmp_path):
    """torch's legacy reader fills only the storages whose data follows the pickle: a crafted
    file gets uninitialised memory. Readable with trust, refused otherwise."""
    path = tmp_path / "legacy.th"
    torch.save({"best_state": {"model": {"w": torch.arange(3.0)}}}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(ExportError, match=r"is in torch's legacy \(pre-1.6\) format, which "
                                          r"cannot be read safely; re-save it"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust=True)
    assert_same_state(loaded["best_state"]["model"], {"w": torch.arange(3.0)})


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (os.urandom(4096), "is not a readable torch checkpoint"),
    (b"model: musicgen\nlr: 0.1\n", "is not a readable torch checkpoint"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.th"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_numpy_metrics_are_read_as_plain_values(tmp_path):
    """Histories hold numpy scalars; they come back as the Python values they stand for,
    decoded without running numpy."""
    import numpy as np

    path = tmp_path / "metrics.th"
    metrics = {"ce": np.float64(1.5), "ppl": np.float32(2.25), "half": np.float16(0.5),
               "step": np.int64(-3), "n": np.uint8(7), "ok": np.bool_(True),
               "z": np.complex128(1 + 2j)}
    torch.save({"history": [{"train": metrics}]}, path)
    got = load_checkpoint(path)["history"][0]["train"]
    assert got == {k: v.item() for k, v in metrics.items()}
    assert [type(v) for v in got.values()] == [float, float, float, int, int, bool, complex]


def test_a_bug_of_ours_while_unpickling_is_not_reported_as_a_damaged_file(musicgen_ckpt,
                                                                          monkeypatch):
    """Damage is what the unpickler or our checks refuse; an error raised inside our own code
    (here: a persistent id handler that breaks) propagates as itself, with its traceback."""
    import audiocraft_ext.untrusted.safe_load as safe_load

    def broken(self, saved_id):
        return 1 / 0

    monkeypatch.setattr(safe_load._Unpickler, "persistent_load", broken)
    with pytest.raises(ZeroDivisionError):
        load_checkpoint(musicgen_ckpt)


def test_the_unpicklers_own_errors_are_damage(tmp_path):
    """The same kind of error, raised by the unpickler acting on the file's bytes (APPEND on
    something that is not a list), is one ExportError that keeps its cause."""
    program = c.integer(1) + c.integer(2) + pickle.APPEND
    path = c.write(tmp_path / "damaged.th", c.splice(c.save_with_marker({}, c.in_history),
                                                     program))
    with pytest.raises(ExportError, match="is not a readable torch checkpoint: 'int' object "
                                          "has no attribute 'append'") as info:
        load_checkpoint(path)
    assert isinstance(info.value.__cause__, AttributeError)
