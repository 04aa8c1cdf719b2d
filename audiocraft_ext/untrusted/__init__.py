"""Everything that reads bytes a checkpoint or a user's folder supplies, and nothing else.

The safety boundary: one restricted unpickler (:func:`load_checkpoint`) over a checked zip
reader, tensors left on disk until asked for, ``xp.cfg`` and ``history`` read as data. Nothing
here imports audiocraft, transformers, Hydra or a writer (``tests/test_layering.py``).
"""

from .averaging import average_members, average_state, epoch_checkpoints
from .lazy_tensors import LazyTensor, StoredTensor, TensorLike, cast_state
from .safe_load import UnsafeCheckpointError, load_checkpoint
from .sources import CheckpointSource, resolve_checkpoint, resolve_input, resolve_signature
from .states import StateDict, load_solver_checkpoint, select_state, xp_signature
from .training_history import TrainingSummary, summarize_history
from .xp_config import needed_value, raw_value, xp_config

__all__ = [
    "CheckpointSource", "LazyTensor", "StateDict", "StoredTensor", "TensorLike",
    "TrainingSummary", "UnsafeCheckpointError", "average_members", "average_state",
    "cast_state", "epoch_checkpoints", "load_checkpoint", "load_solver_checkpoint",
    "needed_value", "raw_value", "resolve_checkpoint", "resolve_input", "resolve_signature",
    "select_state", "summarize_history", "xp_config", "xp_signature",
]
