"""The command that fine-tunes from a release with AudioCraft's own training (placeholder)."""

from __future__ import annotations

from collections.abc import Sequence

from .release import COMPRESSION_FILE


def finetune_command(release_dir: str, solver: str, overrides: Sequence[str] = ()) -> list[str]:
    """The arguments after ``dora run``."""
    return [f"solver={solver}", *overrides, f"continue_from=//pretrained/{release_dir}",
            f"compression_model_checkpoint=//pretrained/{release_dir}/{COMPRESSION_FILE}"]
