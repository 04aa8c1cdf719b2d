"""What a checkpoint is, by its solver: an LM of one of audiocraft's families, or an EnCodec.

Decided here once (from ``xp.cfg``'s ``solver``) and read by every step: what is written, how
it is validated, what the card says.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPRESSION_SOLVER = "compression"  # an EnCodec XP: released as compression_state_dict.bin alone


@dataclass(frozen=True)
class Family:
    """How stock audiocraft loads the models of one solver."""

    solver: str
    model_class: str | None  # whose get_pretrained must accept the release (None: unknown)
    is_lm: bool = True  # an LM (state_dict.bin + its compression model), else an EnCodec
    # reloaded with load_lm_model_magnet (which needs the compression model's frame rate)
    magnet: bool = False
    extend_stride: float | None = None  # get_pretrained asserts segment_duration exceeds it


FAMILIES = {f.solver: f for f in (
    Family("musicgen", "MusicGen", extend_stride=18.0),
    Family("audiogen", "AudioGen", extend_stride=2.0),
    Family("magnet", "MAGNeT", magnet=True),
    Family("audio_magnet", "MAGNeT", magnet=True),
    Family(COMPRESSION_SOLVER, "CompressionModel", is_lm=False),
)}
LM_SOLVERS = tuple(name for name, f in FAMILIES.items() if f.is_lm)


def family_of(solver: object) -> Family:
    """The family of ``solver``; any other solver is an LM audiocraft cannot be asked to load
    (its ``model_class`` is None: validation refuses it, ``validate=none`` exports it)."""
    if isinstance(solver, str) and solver in FAMILIES:
        return FAMILIES[solver]
    return Family(str(solver), None)
