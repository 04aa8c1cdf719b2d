"""What a checkpoint's pickle may call, each with its arguments checked before it runs.

A pickle names globals and calls them with arguments of its choosing. Admitting a name is not
enough: ``torch.Tensor(n)`` hands out uninitialised memory, ``dict(config)`` resolves a
config's ``${oc.env:...}`` interpolations, a numpy dtype's pickled state can forge an object
pointer. So every admitted global resolves to a small function of ours that accepts only the
argument types and values that real AudioCraft/flashy/Dora checkpoints use, and builds plain
values from them. The pickle's BUILD opcode (set attributes of an object) is refused on
everything it gets from here: on a checked tensor view it would move the view after the check,
on a function or class it would change it for every later load of the process. Names are
looked up after Python 2 names are mapped to Python 3 ones, as pickle itself does.
"""

from __future__ import annotations

import _compat_pickle
import collections
import inspect
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ..errors import MAX_SHOWN, one_line
from .lazy_tensors import StoredStorage, StoredTensor, view_problem

MAX_DIMS = 64


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        module = {"posix": "os", "nt": "os"}.get(module, module)  # os.system pickles as posix
        self.qualname = one_line(f"{module}.{name}", MAX_SHOWN)
        super().__init__(self.qualname)


class BadArguments(pickle.UnpicklingError):
    """An allowed global was called with arguments no real checkpoint uses."""


def python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles (torch.save's) use Python 2 names: __builtin__.long, commands.Popen."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Sealed:
    """An object a pickle may get but never BUILD upon."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise BadArguments(f"BUILD on {self!r}, which takes no state")


class _Allowed(_Sealed):
    """An admitted global: the checked function of ours that the pickle calls."""

    __slots__ = ("func", "qualname", "signature")

    def __init__(self, func: Callable[..., Any], qualname: str) -> None:
        self.func, self.qualname = func, qualname
        self.signature = inspect.signature(func)

    def __call__(self, *args: Any) -> Any:
        try:
            return self.func(*args)
        except TypeError as exc:
            # A wrong number of arguments is the file's fault; a TypeError from inside the
            # checked function, past its own checks, is ours and must not read as damage.
            # (Bound only on failure: this runs once per tensor of a checkpoint.)
            try:
                self.signature.bind(*args)
            except TypeError:
                raise BadArguments(f"{self.qualname} with {len(args)} arguments: {exc}"
                                   ) from exc
            raise

    def __repr__(self) -> str:
        return self.qualname


def _refuse(what: str, *args: Any) -> BadArguments:
    shown = ", ".join(one_line(type(a).__name__, 40) for a in args)
    return BadArguments(f"{what} called with ({shown})")


# --- builtins: plain values from plain values ---------------------------------------------
_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset,
          OrderedDict, collections.defaultdict)
_SCALARS = (bool, int, float, str)
_TEXT_ENCODINGS = ("utf-8", "utf8", "ascii", "latin1", "latin-1")  # no codec lookup by name


def _is_plain(value: Any) -> bool:
    # exact types: a DictConfig is a Mapping too, and iterating it resolves interpolations
    return type(value) in _PLAIN


def _plain_call(what: str, func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` for a builtin given plain values, whose failures (``list(5)``,
    ``int("x")``, an unhashable set item) are then the file's, not ours."""
    try:
        return func(*args)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadArguments(f"{what}: {one_line(str(exc), MAX_SHOWN)}") from exc


def _container(cls: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not _is_plain(args[0])):
            raise _refuse(f"builtins.{cls.__name__}", *args)
        return _plain_call(f"builtins.{cls.__name__}", cls, *args)
    build.__qualname__ = f"safe_{cls.__name__}"
    return build


def _scalar(cls: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        ok = len(args) <= 1 and all(type(a) in _SCALARS for a in args)
        if cls is int and len(args) == 2:  # int("ff", 16)
            ok = type(args[0]) is str and type(args[1]) is int
        if cls is str and len(args) in (2, 3):  # str(b"...", "utf-8"[, "strict"])
            ok = type(args[0]) is bytes and args[1] in _TEXT_ENCODINGS \
                and args[2:] in ((), ("strict",))
        if not ok:
            raise _refuse(f"builtins.{cls.__name__}", *args)
        return _plain_call(f"builtins.{cls.__name__}", cls, *args)
    build.__qualname__ = f"safe_{cls.__name__}"
    return build


_BUILTINS = {name: _container(cls) for name, cls in (
    ("dict", dict), ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset))}
_BUILTINS.update({name: _scalar(cls) for name, cls in (
    ("int", int), ("float", float), ("bool", bool), ("str", str))})


def _codecs_encode(text: Any, encoding: Any = "utf-8", *errors: Any) -> bytes:
    # protocol 2 spells a bytes literal as _codecs.encode(str, "latin1")
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors:
        raise _refuse("_codecs.encode", text, encoding, *errors)
    return _plain_call("_codecs.encode", text.encode, "latin1")


def _ordered_dict(*args: Any) -> OrderedDict:
    if len(args) > 1 or (args and not _is_plain(args[0])):
        raise _refuse("collections.OrderedDict", *args)
    return _plain_call("collections.OrderedDict", OrderedDict, *args)


def _defaultdict(factory: Any = None, *args: Any) -> collections.defaultdict:
    plain_factory = factory is None or (type(factory) is _Allowed
                                        and factory.func in _BUILTINS.values())
    if not plain_factory or len(args) > 1 or (args and not _is_plain(args[0])):
        raise _refuse("collections.defaultdict", factory, *args)
    return _plain_call("collections.defaultdict", collections.defaultdict, factory, *args)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list, torch.Size) or len(value) > MAX_DIMS \
            or any(type(v) is not int or v < 0 for v in value):
        raise BadArguments(f"{what} is not a list of at most {MAX_DIMS} non-negative ints")
    return tuple(value)


def _torch_size(*args: Any) -> torch.Size:
    if len(args) > 1:
        raise _refuse("torch.Size", *args)
    return torch.Size(_ints(args[0] if args else (), "torch.Size"))


def _torch_device(*args: Any) -> torch.device:
    if not 1 <= len(args) <= 2 or type(args[0]) not in (str, int) \
            or (len(args) == 2 and type(args[1]) is not int):
        raise _refuse("torch.device", *args)
    try:
        return torch.device(*args)
    except (RuntimeError, TypeError, ValueError) as exc:  # torch.device(0, 0), ("cuda:x")
        raise BadArguments(f"torch.device: {one_line(str(exc), MAX_SHOWN)}") from exc


# --- numpy scalars (metrics in a history), decoded without numpy ------------------------
# numpy pickles np.float64(x) as scalar(dtype("f8") + BUILD(state), raw bytes). Only plain
# numeric dtypes are accepted, with exactly the item's bytes; the result is the Python value.
_NUMPY_CODES = {"b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
                "i8": "q", "u8": "Q", "f2": "e", "f4": "f", "f8": "d", "c8": "ff", "c16": "dd"}


class PlainNumpyDType:
    """A numpy dtype as a checkpoint may state it: one plain numeric type, no fields."""

    def __init__(self, code: str) -> None:
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4) \
                or state[1] not in ("<", ">", "|", "=") or state[2:5] != (None, None, None) \
                or state[5:8] != (-1, -1, 0) or (len(state) == 9 and state[8] is not None):
            raise BadArguments(f"numpy dtype {self.code!r}: its pickled state is not that of "
                               "a plain numeric dtype")
        self.byteorder = state[1]

    def __repr__(self) -> str:
        return f"numpy.dtype({self.code!r})"


def _numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> PlainNumpyDType:
    if type(code) is not str or code not in _NUMPY_CODES or type(align) is not bool \
            or type(copy) is not bool:
        raise BadArguments(f"numpy.dtype({one_line(repr(code), 40)}): only plain numeric "
                           "dtypes are allowed")
    return PlainNumpyDType(code)


def _numpy_scalar(dtype: Any, data: Any = None) -> bool | int | float | complex:
    if type(dtype) is not PlainNumpyDType or type(data) is not bytes:
        raise _refuse("numpy scalar", dtype, data)
    order = ">" if dtype.byteorder == ">" else "<"
    fmt = order + _NUMPY_CODES[dtype.code]
    if len(data) != struct.calcsize(fmt):
        raise BadArguments(f"numpy scalar of dtype {dtype.code!r} with {len(data)} bytes")
    values = struct.unpack(fmt, data)
    return complex(*values) if len(values) == 2 else values[0]


# --- tensors: lazy views of the archive's storages ----------------------------------------
class TypeToken(_Sealed):
    """Stands for a type a pickle names but must not call: ``torch.Tensor`` / ``nn.Parameter``
    as the type of a rebuilt tensor (``torch.Tensor(n)`` is uninitialised memory), and
    ``typing.Any`` as a config node's declared type."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __call__(self, *args: Any) -> Any:
        raise _refuse(self.qualname, *args)

    def __repr__(self) -> str:
        return self.qualname


def _view(storage: Any, offset: Any, size: Any, stride: Any,
          dtype: torch.dtype | None = None) -> StoredTensor:
    if type(storage) is not StoredStorage:
        raise BadArguments(f"a tensor is rebuilt from a {one_line(type(storage).__name__, 40)}, "
                           "not from a storage of the archive")
    size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise BadArguments("a tensor's offset, size and stride do not describe a view")
    if dtype is None:
        dtype = storage.dtype
    elif not isinstance(dtype, torch.dtype) or storage.dtype != torch.uint8:
        raise BadArguments("_rebuild_tensor_v3 needs an untyped storage and a torch dtype")
    problem = view_problem(storage.nbytes, dtype, offset, size, stride)
    if problem is not None:
        raise BadArguments(f"a tensor of storage {storage.key!r} is unreadable: {problem}")
    return StoredTensor(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> StoredTensor:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> StoredTensor:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> StoredTensor:
    # dtypes without a typed storage (float8, uint16/32/64, complex32) are saved this way
    return _view(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> StoredTensor:
    if type(data) is not StoredTensor:
        raise _refuse("torch._utils._rebuild_parameter", data)
    return data  # the plain tensor is all a release needs


_TENSOR_TYPES = {("torch", "Tensor"): TypeToken("torch.Tensor"),
                 ("torch.nn.parameter", "Parameter"): TypeToken("torch.nn.Parameter")}
_TENSOR_REBUILDS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter}


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    # how tensor subclasses (nn.Parameter) pickle: func(*args), then as_subclass(new_type)
    if type(func) is not _Allowed or func.func not in _TENSOR_REBUILDS \
            or type(new_type) is not TypeToken or type(args) is not tuple:
        raise _refuse("torch._tensor._rebuild_from_type_v2", func, new_type, args)
    return func(*args)


# --- OmegaConf objects: recorded as data, never built ------------------------------------
class _SealedClass(type):
    """Classes a pickle may name (to create instances) but not change."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise BadArguments(f"setting {name!r} on {cls.__name__}, which is sealed")


class PickledConfig(metaclass=_SealedClass):
    """An OmegaConf object (DictConfig, ListConfig, a node or its metadata) as its pickle
    states it: the class name and the state dict, nothing run.

    Building the real objects would hand attacker-chosen state to omegaconf's code (a
    ``_parent`` cycle hangs its error path, a resolver cache pre-fills what interpolations
    return); :func:`config_data` turns the recorded tree into plain data instead.
    """

    kind = "?"
    state: dict[str, Any] = {}  # until BUILD gives the instance its own (read, never mutated)

    def __init__(self, *args: Any) -> None:
        if args:  # pickles create these with NEWOBJ + BUILD, never by calling the class
            raise _refuse(f"omegaconf {self.kind}", *args)
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if type(state) is not dict:
            raise _refuse(f"the state of omegaconf {self.kind}", state)
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.kind}>"


_CONFIG_CLASSES = {
    key: type(key[1], (PickledConfig,), {"kind": key[1]})
    for key in [("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
                ("omegaconf.base", "ContainerMetadata"), ("omegaconf.base", "Metadata")]
    + [("omegaconf.nodes", name) for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
        "InterpolationResultNode")]
}
_CONFIG_VALUES = (type(None), bool, int, float, str, bytes)


def config_data(value: Any) -> Any:
    """The plain data (dicts, lists, scalars, interpolations as ``"${...}"`` text) of a
    pickled OmegaConf tree; raises ``ValueError`` naming what does not belong in a config."""
    if isinstance(value, PickledConfig):
        if value.kind in ("DictConfig", "ListConfig"):
            content = value.state.get("_content")
            if value.kind == "DictConfig" and type(content) is dict:
                return {_config_key(k): config_data(v) for k, v in content.items()}
            if value.kind == "ListConfig" and type(content) is list:
                return [config_data(v) for v in content]
            if content is None or type(content) is str:  # null, "???" or "${...}"
                return content
        elif value.kind.endswith("Node") and "_val" in value.state \
                and type(value.state["_val"]) in _CONFIG_VALUES:
            return value.state["_val"]
        raise ValueError(f"a {value.kind} without a value")
    if type(value) in _CONFIG_VALUES:
        return value
    raise ValueError(f"a {type(value).__name__} value")


def _config_key(key: Any) -> Any:
    if type(key) not in (str, int, float, bool, bytes) and key is not None:
        raise ValueError(f"a key of type {type(key).__name__}")
    return key


# (module, name) -> what the pickle gets for it
ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", name): build for name, build in _BUILTINS.items()},
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): _ordered_dict,
    ("collections", "defaultdict"): _defaultdict,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    **_TENSOR_TYPES,
    ("typing", "Any"): TypeToken("typing.Any"),  # a config node's declared type
}
_RESOLVED: dict[tuple[str, str], Any] = {
    key: value if isinstance(value, TypeToken) else _Allowed(value, ".".join(key))
    for key, value in ALLOWED.items()}
_RESOLVED.update(_CONFIG_CLASSES)
_TORCH_DTYPES = {name: value for name in dir(torch)
                 if isinstance(value := getattr(torch, name), torch.dtype)}
_UNTYPED = ("torch.storage", "UntypedStorage")


def resolve_global(module: str, name: str) -> Any:
    """What ``module.name`` of a checkpoint's pickle resolves to; refused if not allowed.

    Storage types (``torch.HalfStorage``, ``torch.storage.UntypedStorage``) resolve to their
    dtype, which only the persistent-id reader accepts.
    """
    key = python3_name(module, name)
    if key in _RESOLVED:
        return _RESOLVED[key]
    if key[0] == "torch" and key[1] in _TORCH_DTYPES:
        return _TORCH_DTYPES[key[1]]
    if key == _UNTYPED:
        return torch.uint8
    if key[0] == "torch" and key[1].endswith("Storage"):
        try:
            return torch.serialization.StorageType(key[1]).dtype
        except (KeyError, AttributeError):
            raise RefusedGlobal(*key) from None
    raise RefusedGlobal(*key)


def storage_from_id(saved_id: Any, storages: dict[str, StoredStorage],
                    make: Callable[[str, torch.dtype, int], StoredStorage]) -> StoredStorage:
    """The storage a persistent id ``('storage', type, key, location, numel)`` names."""
    if type(saved_id) is not tuple or len(saved_id) != 5 or saved_id[0] != "storage":
        raise BadArguments("a persistent id that is not a torch storage reference")
    _, dtype, key, location, numel = saved_id
    if not isinstance(dtype, torch.dtype) or type(key) is not str or not key.isalnum() \
            or len(key) > 32 or type(location) is not str or type(numel) is not int or numel < 0:
        raise BadArguments("a storage reference with a malformed type, key, location or size")
    if key in storages:
        known = storages[key]
        if (known.dtype, known.numel) != (dtype, numel):
            raise BadArguments(f"storage {key!r} is declared twice, with different sizes")
        return known
    storages[key] = make(key, dtype, numel)
    return storages[key]

