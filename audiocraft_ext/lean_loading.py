"""Let stock audiocraft load a release without wasted work.

audiocraft's loaders build the model with its builders, which initialise every weight at
random, then overwrite all of them with a strict ``load_state_dict``; for a MusicGen-medium
that random initialisation takes most of a minute. They also ``torch.load`` the whole file
into memory before copying it into the model. Inside :func:`lean_loading` the same audiocraft
calls run, but the two builders the loaders call (``get_lm_model``, ``get_compression_model``)
build with ``torch.nn.init`` made a no-op, and ``torch.load`` maps zip checkpoints
(``mmap=True``) instead of reading them into memory. Models built any other way (audiocraft's
random debug models, a Hugging Face model) are initialised as usual.
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
    """Within: audiocraft's loaders build their models without random initialisation, and
    torch.load maps zip files."""
    from audiocraft.models import builders

    with ExitStack() as stack:
        for name in _LOADED_BUILDERS:
            stack.enter_context(_replaced(builders, name, _uninitialised(getattr(builders, name))))
        stack.enter_context(_replaced(torch, "load", _mapped(torch.load)))
        yield


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


def _uninitialised(build: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build)
    def build_uninitialised(*args: Any, **kwargs: Any) -> Any:
        with no_init():
            return build(*args, **kwargs)

    return build_uninitialised


def _mapped(load: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(load)
    def mapped_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        # Only paths of zip files: torch maps nothing else (legacy files, streams).
        if "mmap" not in kwargs and isinstance(f, (str, os.PathLike)) and zipfile.is_zipfile(f):
            f, kwargs["mmap"] = os.fspath(f), True  # torch 2.1 maps str paths only
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
