"""An export, step by step: :func:`plan_release` decides everything once, then the release is
written, validated and described from that plan (:func:`export`)."""

from .export import ExportResult, export, export_release
from .plan import ReleasePlan, plan_release, transformers_verdict

__all__ = ["ExportResult", "ReleasePlan", "export", "export_release", "plan_release",
           "transformers_verdict"]
