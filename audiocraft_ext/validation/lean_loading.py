"""Let stock audiocraft load a release without wasted work.

audiocraft's loaders build the model with its builders, which initialise every weight at
random, then overwrite all of them with a strict ``load_state_dict``; for a MusicGen-medium
that random initialisation takes most of a minute. They also ``torch.load`` the whole file
into memory before copying it into the model, so that the file and the model are in memory
together. Inside :func:`lean_loading` the same audiocraft calls run, but:

- the two builders the loaders call (``get_lm_model``, ``get_compression_model``) build with
  ``torch.nn.init`` made a no-op;
- ``torch.load`` maps zip checkpoints (``mmap=True``) instead of reading them;
- as ``load_state_dict`` goes through the modules of a model so built, the mapped pages of
  the tensors it has copied are given back (``madvise(MADV_DONTNEED)``: a private map of an
  unmodified file, so a later read simply reads the file again): memory holds the model and
  one module's weights of the file, not the model and the file.

Models built any other way (audiocraft's random debug models, a Hugging Face model) are
initialised and loaded as usual.
"""

from __future__ import annotations

import functools
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from ..writing.libc import drop_pages

# What modules call from torch.nn.init to initialise their weights (the in-place functions and
# their deprecated aliases), as transformers' no_init_weights lists them.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "sparse_", "uniform", "normal", "constant", "xavier_uniform", "xavier_normal",
    "kaiming_uniform", "kaiming_normal", "orthogonal", "sparse")


# The builders audiocraft's loaders call right before loading every weight into the model.
_LOADED_BUILDERS = ("get_lm_model", "get_compression_model")


@contextmanager
def lean_loading() -> Iterator[None]:
    """Within: audiocraft's loaders build their models without random initialisation,
    torch.load maps zip files, and the mapped pages are given back once copied."""
    from audiocraft.models import builders

    mapped = _MappedStorages()
    with ExitStack() as stack:
        for name in _LOADED_BUILDERS:
            stack.enter_context(_replaced(builders, name,
                                          _uninitialised(getattr(builders, name), mapped)))
        stack.enter_context(_replaced(torch, "load", _mapped(torch.load, mapped)))
        yield


class _MappedStorages:
    """The storages torch.load mapped from files (by data address), whose pages may be
    given back once they have been copied."""

    def __init__(self) -> None:
        self._addresses: set[int] = set()

    def add(self, loaded: Any) -> None:
        for tensor in _tensors(loaded):
            if tensor.device.type == "cpu":
                self._addresses.add(tensor.untyped_storage().data_ptr())

    def release(self, tensor: Any) -> None:
        """Give back the whole pages of ``tensor``'s storage if it is a mapped one."""
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() in self._addresses:
            drop_pages(storage.data_ptr(), storage.nbytes())


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _release_as_loaded(model: torch.nn.Module, mapped: _MappedStorages) -> None:
    """Hook ``model``'s modules so that, when load_state_dict reaches a module, the mapped
    tensors copied into the module before it are released. (A pre-hook runs before its
    module copies its own tensors, after every module visited before it has copied its own.)"""
    copied: list[Any] = []

    def hook(state_dict: Any, prefix: str, *args: Any) -> None:
        for tensor in copied:
            mapped.release(tensor)
        copied.clear()
        # Giving a page back early costs a read of the file, never a value: any prefix is safe.
        module = module_of.get(prefix)
        if module is not None:
            copied.extend(state_dict.get(prefix + name)
                          for name in [*module._parameters, *module._buffers])

    module_of: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        module_of[f"{name}." if name else ""] = module
        module._register_load_state_dict_pre_hook(hook)


@contextmanager
def no_init() -> Iterator[None]:
    """Within: torch.nn.init's functions leave their tensor as it is, wherever they are
    called from: torch.nn.init itself, and the torch and audiocraft modules that imported
    them by name (``nn.MultiheadAttention`` calls its own ``xavier_uniform_``)."""
    originals = {id(f): name for name in _INIT_FUNCTIONS
                 if (f := getattr(torch.nn.init, name, None)) is not None}
    with ExitStack() as stack:
        for module in [m for key, m in list(sys.modules.items())
                       if key.startswith(("torch.nn", "audiocraft")) and m is not None]:
            for attr, value in list(vars(module).items()):
                if id(value) in originals and originals[id(value)] == attr:
                    stack.enter_context(_replaced(module, attr, _skip_init))
        yield


def _skip_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def _uninitialised(build: Callable[..., Any], mapped: _MappedStorages) -> Callable[..., Any]:
    @functools.wraps(build)
    def build_uninitialised(*args: Any, **kwargs: Any) -> Any:
        with no_init():
            model = build(*args, **kwargs)
        _release_as_loaded(model, mapped)
        return model

    return build_uninitialised


def _mapped(load: Callable[..., Any], mapped: _MappedStorages) -> Callable[..., Any]:
    @functools.wraps(load)
    def mapped_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        # Only paths of zip files: torch maps nothing else (legacy files, streams).
        if "mmap" not in kwargs and isinstance(f, (str, os.PathLike)) and zipfile.is_zipfile(f):
            result = load(os.fspath(f), *args, mmap=True, **kwargs)  # torch 2.1: str paths
            mapped.add(result)
            return result
        return load(f, *args, **kwargs)

    return mapped_load


@contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
