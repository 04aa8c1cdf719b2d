import pytest
import torch

from audiocraft_ext.config import StateChoice
from audiocraft_ext.errors import ExportError
from audiocraft_ext.untrusted.safe_load import load_checkpoint
from audiocraft_ext.untrusted.states import select_state


def test_auto_takes_best_state_when_fsdp_best_state_is_empty(musicgen_ckpt):
    pkg = load_checkpoint(musicgen_ckpt)
    key, state = select_state(pkg, StateChoice.auto)
    assert key == "best_state"
    assert state.keys() == pkg["best_state"]["model"].keys()
    assert all(t.dtype == torch.float16 for t in state.values())


def test_auto_prefers_a_non_empty_fsdp_best_state(fsdp_ckpt):
    pkg = load_checkpoint(fsdp_ckpt)
    key, state = select_state(pkg, StateChoice.auto)
    assert key == "fsdp_best_state"
    assert all(state[k] is pkg["fsdp_best_state"]["model"][k] for k in state)
    assert not torch.equal(state["emb.0.weight"].load(),
                           pkg["best_state"]["model"]["emb.0.weight"].load())
    assert select_state(pkg, StateChoice.best)[0] == "best_state"


def test_last_is_the_raw_float32_model(musicgen_ckpt):
    pkg = load_checkpoint(musicgen_ckpt)
    key, state = select_state(pkg, StateChoice.last)
    assert key == "model"
    assert state["emb.0.weight"].dtype == torch.float32


def test_missing_states_are_errors_not_asserts(no_best_ckpt):
    pkg = load_checkpoint(no_best_ckpt)
    with pytest.raises(ExportError, match="no usable best state: fsdp_best_state and "
                                          "best_state are empty"):
        select_state(pkg, StateChoice.auto, source="ckpt")
    with pytest.raises(ExportError,
                       match="state=fsdp_best needs 'fsdp_best_state', which is empty"):
        select_state(pkg, StateChoice.fsdp_best, source="ckpt")
    del pkg["best_state"]
    with pytest.raises(ExportError, match="state=best needs 'best_state', which is missing"):
        select_state(pkg, StateChoice.best, source="ckpt")
