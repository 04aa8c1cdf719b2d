"""The 🤗 transformers half of a release: what its Musicgen and EnCodec classes cannot
represent, the configs and weight mapping, the files, and the proof of equivalence."""

from .files import (
    prove_encodec,
    prove_release,
    refusal,
    write_encodec_files,
    write_musicgen_files,
)
from .mapping import encodec_refusals, refusals

__all__ = ["encodec_refusals", "prove_encodec", "prove_release", "refusal", "refusals",
           "write_encodec_files", "write_musicgen_files"]
