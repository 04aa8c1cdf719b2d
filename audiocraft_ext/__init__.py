"""Turn AudioCraft training checkpoints into validated release folders."""

__version__ = "0.1.0"

from .config import (AutoCompression, CheckpointCompression, NoCompression,  # noqa: E402
                     PretrainedCompression, StateChoice, ValidateConfig, ValidateLevel)
from .errors import ExportError  # noqa: E402
from .exporter import ExportResult, export_release  # noqa: E402
from .safe_load import UnsafeCheckpointError, load_checkpoint  # noqa: E402

__all__ = ["export_release", "ExportResult", "ExportError", "UnsafeCheckpointError",
           "load_checkpoint", "StateChoice", "ValidateConfig", "ValidateLevel",
           "AutoCompression", "PretrainedCompression", "CheckpointCompression", "NoCompression"]
