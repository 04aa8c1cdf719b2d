"""The options of an export: one schema, read by the command line and the library alike.

Every YAML option under ``conf/`` extends one of these dataclasses (registered in Hydra's
ConfigStore by :mod:`audiocraft_ext.app.config_store`), so a misspelt key or a value of the
wrong type fails at composition time, before any file is read. The library takes the same
dataclasses (:func:`audiocraft_ext.pipeline.export.export`), and messages name an option as
its field here is named (:func:`audiocraft_ext.errors.setting`).
"""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from omegaconf import MISSING

# The YAML options of each group: the package's conf/ (in a checkout, a link to the top-level
# conf/), found from any working directory.
CONF_DIR = Path(__file__).resolve().parent / "conf"


class StateChoice(str, Enum):
    """Which state of a training checkpoint becomes the release weights."""

    auto = "auto"  # export_lm's rule: a non-empty fsdp_best_state, else best_state
    fsdp_best = "fsdp_best"
    best = "best"
    last = "last"  # the raw (non-EMA, non-best) `model` state
    ema = "ema"  # the EMA weights (`ema['state']['model']`)
    average = "average"  # the mean of one state over several epoch checkpoints


class OutputDtype(str, Enum):
    """dtype of the released LM's floating-point tensors."""

    keep = "keep"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class RecordPaths(str, Enum):
    """How a release records the paths it was made from (export.json, model card, configs)."""

    relative = "relative"  # relative to the Dora dir, else the file name: nothing private
    absolute = "absolute"  # as given, and xp.cfg exactly as the checkpoint holds it


class ValidateLevel(str, Enum):
    """How much of the release is proven before it is published."""

    full = "full"  # reload + exact comparison + get_pretrained + generation
    load = "load"  # reload through audiocraft.models.loaders + exact comparison
    none = "none"


class GenerationChoice(str, Enum):
    """Which generation settings validation generates (and keeps its samples) with."""

    # the XP's own: xp.cfg's generate.lm (sampling, top_k, top_p, temp; MAGNeT's decoding
    # steps, span arrangement and CFG range), classifier_free_guidance.inference_coef and
    # generate.audio (how its samples are normalised when written), as its solver generates
    xp = "xp"
    stock = "stock"  # set_generation_params' defaults and audio_write's normalisation


# --- input -------------------------------------------------------------------------------
@dataclass
class InputConfig:
    """Where the training checkpoint comes from."""

    # Unpickle without the allow-list. Runs any code the checkpoint carries: only for files
    # whose origin you know. Never automatic.
    trust: bool = False


@dataclass
class CheckpointInput(InputConfig):
    path: str = MISSING  # a checkpoint file, or an XP folder holding checkpoint.th


@dataclass
class XPInput(InputConfig):
    dora_dir: str | None = None  # the folder holding xps/; defaults to $AUDIOCRAFT_DORA_DIR
    sig: str | None = None  # Dora signature of the XP
    path: str | None = None  # an XP folder, instead of dora_dir + sig
    epoch: int | None = None  # export checkpoint_<epoch>.th instead of checkpoint.th


@dataclass
class WeightsInput(InputConfig):
    """Weights trained elsewhere, given the architecture and compression model of a base."""

    # a weights file (a bare or wrapped state dict: .pt, .bin, .ckpt, .th, .safetensors) or a
    # folder (transformers' MusicGen, a PEFT LoRA adapter over one)
    path: str = MISSING
    # what gives xp.cfg and the compression model: an AudioCraft release folder, a training
    # checkpoint or XP folder, or a Hub name already in the Hugging Face cache
    base: str | None = None


@dataclass
class DemoInput(InputConfig):
    dora_dir: str = "${hydra:runtime.output_dir}/demo_dora"  # where the demo XPs are written


# --- state -------------------------------------------------------------------------------
@dataclass
class StateConfig:
    select: StateChoice = StateChoice.auto
    # state=average: which state of each epoch checkpoint, and which epochs (an explicit list,
    # else the last `last_k` checkpoint_<epoch>.th files of the XP folder)
    average_of: StateChoice = StateChoice.last
    last_k: int = 3
    epochs: list[int] | None = None


# --- compression -------------------------------------------------------------------------
@dataclass
class CompressionConfig:
    """Which compression model (the LM's audio tokenizer) ships in compression_state_dict.bin."""


@dataclass
class AutoCompression(CompressionConfig):
    """Follow the LM config's ``compression_model_checkpoint``."""


@dataclass
class PretrainedCompression(CompressionConfig):
    name: str = MISSING  # e.g. facebook/encodec_32khz, written as a pointer


@dataclass
class CheckpointCompression(CompressionConfig):
    path: str = MISSING  # an EnCodec checkpoint, XP folder, exported file or //sig/SIG


@dataclass
class NoCompression(CompressionConfig):
    """Write the LM file only (get_pretrained validation is then skipped)."""


# --- output / validate -------------------------------------------------------------------
@dataclass
class OutputConfig:
    dir: str | None = None  # release folder; default: <hydra run dir>/<XP or checkpoint name>
    overwrite: bool = False  # replace an existing release (only once the new one validated)
    dtype: OutputDtype = OutputDtype.keep  # cast the LM's floating-point tensors
    # samples/ (the clips validate=full generates, with spectrograms) and training_curves.png
    samples: bool = True
    # the model card's license (a Hugging Face Hub identifier, e.g. cc-by-nc-4.0); unset, the
    # card says so
    license: str | None = None
    record_paths: RecordPaths = RecordPaths.relative
    # add transformers' format (MusicgenForConditionalGeneration) beside AudioCraft's files
    transformers: bool = False
    # a local folder holding the LM's T5 (default: its name, from the Hub or HF_HOME's cache)
    text_encoder: str | None = None
    # export the transformers half (output.transformers=true) to ONNX under onnx/, as Optimum
    # and Transformers.js lay it out, with Optimum's exporter from the toolchain that
    # `python -m audiocraft_ext.onnx_format.toolchain` installs; proven with ONNX Runtime
    onnx: bool = False
    onnx_quantize: bool = False  # also the 8-bit graphs (*_quantized.onnx, Transformers.js' q8)


@dataclass
class ValidateConfig:
    level: ValidateLevel = ValidateLevel.full
    duration: float = 1.0  # seconds of audio generated by `full`
    description: str = "warm lo-fi piano with soft drums"  # prompt for text-conditioned models
    device: str = "cpu"
    seed: int = 0  # torch.manual_seed before each clip generated (recorded with the samples)
    # xp: generate with the XP's own generation settings (xp.cfg's generate.lm, its CFG
    # coefficient, generate.audio's normalisation); a value that is not a literal falls back to
    # audiocraft's default, and the samples' record says so. stock: set_generation_params' and
    # audio_write's defaults.
    generation: GenerationChoice = GenerationChoice.xp
    # A local compression model file (an exported compression_state_dict.bin) to validate with
    # when the release points at a //pretrained/ one that this machine cannot download.
    compression_model: str | None = None
    # frames the transformers proof (output.transformers=true) decodes greedily in both stacks
    # and compares logits over; default: as many as the release's generation_config.json
    # generates (one training segment: 1500 for 30 s at 50 Hz)
    transformers_frames: int | None = None


class Mode(str, Enum):
    export = "export"
    inspect = "inspect"  # print what the checkpoint holds; write nothing
    list = "list"  # one line per XP of a Dora dir (input=xp with its dora_dir); write nothing


@dataclass
class InspectConfig:
    json: bool = False  # mode=inspect prints JSON instead of text


@dataclass
class ListConfig:
    # Order of the lines: sig (default), solver, epochs, params, size, or a metric name (ce,
    # sisnr...): ascending by its last valid value, XPs that do not log it last.
    sort: str | None = None
    json: bool = False  # print one JSON list instead of the table
    # A folder of releases: an XP has one when <releases>/<folder>/export.json (one level
    # deep) names its signature as source.xp_sig.
    releases: str | None = None


@dataclass
class ExportConfig:
    mode: Mode = Mode.export
    inspect: InspectConfig = field(default_factory=InspectConfig)
    list: ListConfig = field(default_factory=ListConfig)
    input: InputConfig = MISSING
    state: StateConfig = MISSING
    compression: CompressionConfig = MISSING
    output: OutputConfig = MISSING
    validate: ValidateConfig = MISSING

    def __post_init__(self) -> None:
        # Built in Python (the library), a group left out takes its default option; composed
        # by Hydra, conf/export.yaml's defaults list always chose one.
        for name, default in (("input", InputConfig), ("state", StateConfig),
                              ("compression", AutoCompression), ("output", OutputConfig),
                              ("validate", ValidateConfig)):
            if getattr(self, name) == MISSING:
                setattr(self, name, default())


# The options of each config group that conf/ offers (conf/<group>/<name>.yaml extends
# schema/<group>/<name>): group -> option name -> schema.
OPTIONS: dict[str, dict[str, type]] = {
    "input": {"checkpoint": CheckpointInput, "xp": XPInput, "weights": WeightsInput,
              "demo": DemoInput},
    "state": {"state": StateConfig},
    "compression": {"auto": AutoCompression, "pretrained": PretrainedCompression,
                    "checkpoint": CheckpointCompression, "none": NoCompression},
    "output": {"output": OutputConfig},
    "validate": {"validate": ValidateConfig},
}
