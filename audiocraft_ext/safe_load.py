"""The single place where checkpoints are unpickled.

A checkpoint is a pickle, and a pickle can call any importable function. Instead of torch's
``weights_only`` allow-list (which rejects Dora-composed configs on torch >= 2.6 and cannot be
extended on torch 2.1), checkpoints are read with a restricted ``Unpickler`` whose
``find_class`` only resolves the globals that AudioCraft, flashy and Dora checkpoints contain,
and refuses anything else before it runs. Tensors of zip checkpoints come back as
:class:`StoredTensor` (read on demand); legacy (pre-1.6) files go through ``torch.load`` with
the same unpickler and come back as tensors.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError, first_line
from .stored_tensor import CheckpointArchive, StoredStorage, StoredTensor

logger = logging.getLogger(__name__)

# (module, name) pairs a checkpoint may reference.
# Names are checked after Python 2 names are mapped to Python 3 ones, as pickle itself does.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    # not bytes/bytearray: bytes(n) would allocate whatever a corrupt file asks for
    [("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float",
                                     "bool", "str")]
    + [
        ("_codecs", "encode"),  # how protocol-2 pickles spell a bytes literal
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("typing", "Any"),
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
# The C implementations of os functions pickle under their platform module's name.
_DISPLAY_MODULE = {"posix": "os", "nt": "os"}


class UnsafeCheckpointError(ExportError):
    """The checkpoint references a global outside the allow-list."""


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles (torch.save's) use Python 2 names: __builtin__.long, commands.Popen."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{_DISPLAY_MODULE.get(module, module)}.{name}"
        super().__init__(self.qualname)


def _lazy_rebuild_tensor(storage: StoredStorage, offset: int, size: tuple, stride: tuple,
                         *_: Any) -> StoredTensor:
    return StoredTensor(storage, offset, tuple(size), tuple(stride))


def _lazy_rebuild_parameter(data: StoredTensor, *_: Any) -> StoredTensor:
    return data


def _lazy_rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    # Tensor subclasses (nn.Parameter) reduce to this; the plain tensor is all a release needs.
    return func(*args)


# How the tensor-rebuilding functions torch pickles resolve when reading lazily.
_LAZY_REBUILDS = {
    ("torch._utils", "_rebuild_tensor"): _lazy_rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _lazy_rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _lazy_rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _lazy_rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _lazy_rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,  # only ever passed as new_type
    ("torch", "Tensor"): torch.Tensor,
}


_EAGER_REBUILDS = frozenset(_LAZY_REBUILDS)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`, torch dtypes and the tensor rebuild functions;
    refuses anything else without running it. With ``trust``, resolves everything."""

    trust = False

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key in ALLOWED_GLOBALS or key in _EAGER_REBUILDS \
                or (key[0] == "torch" and key[1] in _TORCH_DTYPES) or self.trust:
            return super().find_class(module, name)
        raise _RefusedGlobal(*key)


class _LazyUnpickler(RestrictedUnpickler):
    """Reads ``data.pkl`` of a zip checkpoint, turning storages into on-disk references."""

    def __init__(self, file: Any, archive: CheckpointArchive, trust: bool) -> None:
        super().__init__(file, encoding="utf-8")
        self.archive = archive
        self.trust = trust
        self._storages: dict[str, StoredStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _LAZY_REBUILDS:
            return _LAZY_REBUILDS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _storage_dtype(name)
        return super().find_class(module, name)

    def persistent_load(self, saved_id: Any) -> StoredStorage:
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r}")
        _, dtype, key, _location, numel = saved_id
        if key not in self._storages:
            self._storages[key] = StoredStorage(self.archive, str(key), dtype, int(numel))
        return self._storages[key]


def _storage_dtype(name: str) -> torch.dtype:
    if name == "UntypedStorage":
        return torch.uint8
    try:
        return torch.serialization.StorageType(name).dtype
    except (KeyError, AttributeError):
        raise pickle.UnpicklingError(f"unknown storage type torch.{name}") from None


def load_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """Load a torch checkpoint without running code from it.

    Args:
        path: the file to read.
        trust: unpickle without the allow-list. Runs whatever the file says: only for files
            whose origin is known.
    Returns:
        The checkpoint's object; tensors of zip-format files are :class:`StoredTensor`.
    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list.
        ExportError: the file is missing or is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty (0 bytes): not a checkpoint")
    if trust:
        logger.warning("input.trust=true: unpickling %s WITHOUT the allow-list; "
                       "it can run arbitrary code", path)
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = zipfile.is_zipfile(path)
    if head == b"PK\x03\x04" and not is_zip:
        raise ExportError(f"{path} is truncated or damaged: it starts as a torch zip checkpoint "
                          "but its zip directory (at the end of the file) is missing")
    try:
        if is_zip:
            archive = CheckpointArchive(path)
            data = archive.read_bytes("data.pkl")
            return _LazyUnpickler(io.BytesIO(data), archive, trust).load()
        return _load_legacy(path, trust)
    except _RefusedGlobal as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it references {exc.qualname}, which is not allowed in "
            "a checkpoint (set input.trust=true only if you know where the file comes from)"
        ) from None
    except ExportError:
        raise
    except Exception as exc:  # a corrupt pickle fails in many ways; none of them is a bug here
        raise ExportError(f"{path} is not a readable torch checkpoint: {first_line(exc)}"
                          ) from None


def _load_legacy(path: Path, trust: bool) -> Any:
    """Pre-1.6 (non-zip) files: no lazy access is possible, torch.load reads them whole."""
    unpickler = type("Unpickler", (RestrictedUnpickler,), {"trust": trust})
    module = types.ModuleType("audiocraft_ext_restricted_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return torch.load(str(path), map_location="cpu", pickle_module=module, weights_only=False)
