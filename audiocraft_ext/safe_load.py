"""The single place where checkpoints are unpickled.

A checkpoint is a pickle, and a pickle can call any importable function. Instead of torch's
``weights_only`` allow-list (which rejects Dora-composed configs on torch >= 2.6 and cannot be
extended on torch 2.1), ``torch.load`` is given a restricted ``Unpickler`` whose ``find_class``
only resolves the globals that AudioCraft, flashy and Dora checkpoints really contain. Tensor
storages go through torch's own ``persistent_load``, never through ``find_class``.
"""

from __future__ import annotations

import logging
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError

logger = logging.getLogger(__name__)

# (module, name) pairs a checkpoint may reference. Protocol-2 pickles name builtins "__builtin__".
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(mod, name) for mod in ("builtins", "__builtin__")
     for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str",
                  "bytes", "bytearray", "complex", "slice", "long", "unicode")]
    + [
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("typing", "Any"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._utils", "_rebuild_sparse_tensor"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "Tensor"),
        ("torch", "Size"),
        ("torch", "device"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.base", "Metadata"),
    ]
    + [("omegaconf.nodes", name) for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
        "PathNode", "InterpolationResultNode")]
    + [("numpy.dtypes", name) for name in (
        "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")]
)
_TORCH_DTYPES = frozenset(name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype))


class UnsafeCheckpointError(ExportError):
    """The checkpoint references a global outside the allow-list."""


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS` (and torch dtypes); refuses anything else unrun."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and name in _TORCH_DTYPES):
            return super().find_class(module, name)
        raise _RefusedGlobal(module, name)


# torch.load(pickle_module=...) subclasses `pickle_module.Unpickler` and calls `.load` for
# legacy files; this module object offers exactly those, built on the restricted class.
restricted_pickle = types.ModuleType("audiocraft_ext_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]


def load_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """Load a torch checkpoint on the CPU, memory-mapped when its format allows.

    Args:
        path: the file to read.
        trust: unpickle without the allow-list. Runs whatever the file says: only for files
            whose origin is known.
    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list.
        ExportError: the file is missing or is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty (0 bytes): not a checkpoint")
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy files load in full
    if trust:
        logger.warning("input.trust=true: unpickling %s WITHOUT the allow-list; "
                       "it can run arbitrary code", path)
        pickle_module: Any = pickle
    else:
        pickle_module = restricted_pickle
    try:
        return torch.load(str(path), map_location="cpu", pickle_module=pickle_module,
                          weights_only=False, mmap=mmap)
    except _RefusedGlobal as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it references {exc.qualname}, which is not allowed in "
            "a checkpoint (set input.trust=true only if you know where the file comes from)"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
            UnicodeDecodeError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path} is not a readable torch checkpoint: {first}") from None
