"""Facts recorded in a release's export.json."""

from __future__ import annotations

import platform
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from .stored_tensor import TensorLike


def file_facts(path: Path) -> dict[str, Any]:
    """Size and modification time of a source file."""
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size,
            "mtime": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat()}


def state_facts(state: Mapping[str, TensorLike]) -> dict[str, Any]:
    """Tensor count, parameter count, dtypes and bytes of a flat state dict."""
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state.values())
    return {"tensors": len(state),
            "parameters": sum(t.numel() for t in state.values()),
            "dtypes": dict(sorted(dtypes.items())),
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}


def versions() -> dict[str, str]:
    import hydra
    import omegaconf

    import audiocraft_ext

    from .release import audiocraft_version

    return {"audiocraft_ext": audiocraft_ext.__version__, "audiocraft": audiocraft_version(),
            "torch": torch.__version__, "omegaconf": omegaconf.__version__,
            "hydra": hydra.__version__, "python": platform.python_version()}
