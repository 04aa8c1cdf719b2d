"""Writing a release: the files of audiocraft's release format, streamed into torch's zip
container, staged and published atomically, with the paths they record kept private."""

from .compression import CompressionRelease, resolve_compression
from .publish import staged_release
from .recorded_paths import PathRecorder
from .release_format import (
    COMPRESSION_FILE,
    LM_FILE,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    release_package,
    save_package,
)
from .repairs import loadable_config
from .torch_writer import save_streaming
from .torch_zip import WrittenZip

__all__ = [
    "COMPRESSION_FILE", "LM_FILE", "MANIFEST_FILE", "MODEL_CARD_FILE", "CompressionRelease",
    "PathRecorder", "WrittenZip", "loadable_config", "release_package", "resolve_compression",
    "save_package", "save_streaming", "staged_release",
]
