"""What a release tells people: the typed manifest (``export.json``), the model's facts, the
model card, samples and figures, and the progress and measurements of an export."""

from .logs import log_to_stderr
from .manifest import Check, Manifest, ValidationReport
from .model_card import render_model_card
from .model_facts import ModelRecord, model_facts
from .samples import Clip, write_samples

__all__ = ["Check", "Clip", "Manifest", "ModelRecord", "ValidationReport", "log_to_stderr",
           "model_facts", "render_model_card", "write_samples"]
