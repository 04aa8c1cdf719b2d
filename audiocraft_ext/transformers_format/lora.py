"""A PEFT adapter over a transformers MusicGen, merged into its base's weights with PyPI
``peft`` (an optional dependency: the ``lora`` extra)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, first_line
from .equivalence import load_strictly

# adapter_config.json's entries the manifest records (the rest are training settings)
RECORDED = ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path",
            "use_dora", "use_rslora")
MAX_TEXT = 200  # characters of a recorded text entry (the file is data)
MAX_TARGETS = 64  # target modules recorded


def adapter_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the release records of an adapter: type, rank, scale, targets, its base's name."""
    facts = {key: config.get(key) for key in RECORDED if config.get(key) is not None}
    targets = facts.get("target_modules")
    if isinstance(targets, list):
        facts["target_modules"] = sorted(str(t)[:MAX_TEXT] for t in targets)[:MAX_TARGETS]
    return {key: value if isinstance(value, (bool, int, float, list)) else str(value)[:MAX_TEXT]
            for key, value in facts.items()}


def merged_state(adapter: Path, base_folder: Path, model_class: str,
                 ) -> dict[str, torch.Tensor]:
    """The state of the transformers MusicGen (``model_class``) in ``base_folder`` with the
    adapter merged in (``PeftModel.from_pretrained`` then ``merge_and_unload``), in
    transformers' names."""
    try:
        import peft
    except ImportError as exc:
        raise ExportError(f"{adapter} is a PEFT adapter: merging it needs peft, which is not "
                          "installed (pip install 'audiocraft-ext[lora]', or pip install peft)"
                          ) from exc
    import transformers

    try:
        model = load_strictly(getattr(transformers, model_class), base_folder)
    except (OSError, ValueError) as exc:
        raise ExportError(f"transformers could not load the base's model ({model_class}) to "
                          f"merge the adapter into: {first_line(exc)}") from exc
    try:
        # the adapter's weights are adapter_model.safetensors (weights_files checked it)
        merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        # load_state_dict's first line is a heading; the size mismatch it lists says why
        lines = [line.strip() for line in str(exc).splitlines()]
        why = next((line for line in lines if line.startswith("size mismatch")), None)
        raise ExportError(f"peft cannot merge the adapter {adapter} into the base's "
                          f"transformers model: {why or first_line(exc)}") from exc
    return {key: tensor.detach().clone() for key, tensor in merged.state_dict().items()}
