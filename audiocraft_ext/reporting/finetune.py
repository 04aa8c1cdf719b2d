"""Fine-tuning from a release with AudioCraft's own training: the recipe's command line.

One builder for the model card and the test that runs the recipe for real
(``tests/test_finetune.py``), so that the published command is the tested one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..writing.release_format import COMPRESSION_FILE

PRETRAINED = "//pretrained/"  # audiocraft's prefix for a released model (a name, folder or file)
# keys the recipe sets itself: an XP's own values for them point at its training, not the release
RECIPE_KEYS = ("solver", "continue_from", "compression_model_checkpoint")


def finetune_command(release_dir: str, solver: str, overrides: Sequence[str] = ()) -> list[str]:
    """The arguments after ``dora -P audiocraft run`` that fine-tune from ``release_dir``.

    ``continue_from=//pretrained/<release_dir>`` makes the solver load the release's weights
    (``load_lm_model_ckpt``) into the model its config builds, with a strict
    ``load_state_dict``; ``compression_model_checkpoint`` points at the release's compression
    model (``CompressionModel.get_pretrained(file)``). Neither needs the original XP, its
    ``//sig/`` compression model or its Dora dir. The model must therefore be built as in the
    XP: ``solver`` is the XP's solver config (e.g. ``musicgen/musicgen_base_32khz``, see
    :func:`solver_config`) and ``overrides`` must keep its model settings (scale, LM,
    conditioners, codebook pattern); data and optimisation may change. Overrides of the
    keys the recipe sets (``RECIPE_KEYS``) are left out, so an XP's whole argv can be given.
    ``release_dir`` is the folder as the training machine sees it, absolute: audiocraft's
    Hydra app (version_base 1.1) runs the solver inside its XP folder, where a relative
    path would not resolve.
    """
    kept = [o for o in overrides if _key(o) not in RECIPE_KEYS]
    release = release_dir.rstrip("/") or "/"
    return [f"solver={solver}", *kept, f"continue_from={PRETRAINED}{release}",
            f"compression_model_checkpoint={PRETRAINED}{release}/{COMPRESSION_FILE}"]


def solver_config(argv: Sequence[str]) -> str | None:
    """The solver config an XP was launched with (``musicgen/debug``), from its Dora argv
    (``<XP folder>/.argv.json``): the checkpoint's ``xp.cfg`` keeps only the solver family
    (``solver: musicgen``), which names no config. None when the argv sets no solver."""
    values = [o.split("=", 1)[1] for o in argv if _key(o) == "solver" and "=" in o]
    return values[-1] if values else None  # Hydra applies overrides in order: the last wins


def _key(override: str) -> str:
    """The config key of a Hydra override (``+a.b=1`` -> ``a.b``, ``~a`` -> ``a``)."""
    return override.split("=", 1)[0].lstrip("+~")
