"""Turn AudioCraft training checkpoints into validated release folders.

    import audiocraft_ext
    audiocraft_ext.log_to_stderr()  # optional: the progress lines the command line shows
    audiocraft_ext.export_release("dora/xps/SIG/checkpoint.th", "releases/SIG")

or with the schema the command line composes (``audiocraft_ext.config``)::

    spec = audiocraft_ext.ExportConfig(output=audiocraft_ext.OutputConfig(dir="releases/SIG"))
    audiocraft_ext.export("dora/xps/SIG/checkpoint.th", spec)

Names are imported on first use, so that reading the configuration (``export_app.py --help``,
``--cfg job``) does not pay for importing torch and audiocraft.
"""

from importlib import import_module
from typing import Any

__version__ = "0.7.0"

_EXPORTS = {
    "export_release": "pipeline.export", "export": "pipeline.export",
    "ExportResult": "pipeline.export", "ExportConfig": "config", "InputConfig": "config",
    "OutputConfig": "config",
    "ExportError": "errors", "Manifest": "reporting.manifest",
    "load_checkpoint": "untrusted.safe_load", "UnsafeCheckpointError": "untrusted.safe_load",
    "StateChoice": "config", "StateConfig": "config", "ValidateConfig": "config",
    "ValidateLevel": "config", "OutputDtype": "config",
    "AutoCompression": "config", "PretrainedCompression": "config",
    "CheckpointCompression": "config", "NoCompression": "config", "RecordPaths": "config",
    "log_to_stderr": "reporting.logs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
