"""Proving a staged release with stock AudioCraft before it is published: the files as
written, audiocraft's loaders and ``get_pretrained`` compared bit for bit with the source,
generation."""

from .compare import check_release_file, compare_states, same_bits
from .compression_model import validate_compression_release
from .lean_loading import lean_loading
from .lm import validate_release

__all__ = ["check_release_file", "compare_states", "lean_loading", "same_bits",
           "validate_compression_release", "validate_release"]
