"""What a checkpoint is, by its solver: an LM of one of audiocraft's families, or an EnCodec.

Decided here once (from ``xp.cfg``'s ``solver``) and read by every step: what is written, how
it is validated, what the card says.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import shown

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
    # the max_duration of the family's released models: what a release whose segments are too
    # short for get_pretrained is built with instead (it must exceed extend_stride)
    max_duration: float | None = None

    def get_pretrained_refusal(self, segment: object) -> str | None:
        """Why stock ``get_pretrained`` refuses a model of this family trained on ``segment``
        seconds (xp.cfg's dataset.segment_duration), and what to do instead; None when it
        loads it."""
        if self.extend_stride is None or self.max_duration is None:
            return None
        if type(segment) not in (int, float):
            return (f"{self.model_class}.get_pretrained needs a number of seconds in xp.cfg's "
                    f"dataset.segment_duration, which holds {shown(segment)}")
        assert isinstance(segment, (int, float))
        if segment > self.extend_stride:
            return None
        return (f"stock {self.model_class}.get_pretrained cannot load this model: it was "
                f"trained on dataset.segment_duration={segment:g} s and asserts that its "
                f"{self.extend_stride:g} s extend_stride is shorter; load the release with "
                f"{self.model_class}(name, loaders.load_compression_model(folder), "
                f"loaders.load_lm_model(folder), max_duration={self.max_duration:g}) (any "
                f"max_duration above {self.extend_stride:g} s; generating beyond {segment:g} s "
                f"goes past what it was trained on), or retrain with segments over "
                f"{self.extend_stride:g} s")


FAMILIES = {f.solver: f for f in (
    Family("musicgen", "MusicGen", extend_stride=18.0, max_duration=30.0),
    Family("audiogen", "AudioGen", extend_stride=2.0, max_duration=10.0),
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
