"""The 🤗 transformers half of a release (``output.transformers=true``).

Beside AudioCraft's files, a MusicGen or AudioGen release gets what
``MusicgenForConditionalGeneration.from_pretrained(folder)`` and
``AutoProcessor.from_pretrained(folder)`` load, in the Hugging Face Hub's layout (the one both
transformers 4.44 and 5.x read): the model's ``config.json`` and ``model.safetensors`` (decoder
and audio encoder from the exported states, text encoder from the T5 the LM was trained with),
``generation_config.json``, ``preprocessor_config.json`` and the T5 tokenizer's files.
Validation then proves that the folder computes what AudioCraft computes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import ExportError, first_line, setting, shown
from ..validation.lean_loading import lean_loading
from ..writing.release_format import (
    COMPRESSION_FILE,
    TRANSFORMERS_FILES,
    settle,
    write_text,
)
from .equivalence import (
    encodec_figures,
    lm_figures,
    load_strictly,
    melody_figures,
    text_encoder_config,
    write_folder,
)
from .mapping import (
    audio_channels,
    checked_decoder,
    checked_encodec,
    codec_codebooks,
    encodec_config_kwargs,
    encodec_refusals,
    encodec_state,
    generation_kwargs,
    melody_attributes,
    melody_kwargs,
    musicgen_state,
    refusals,
    value,
)
from .text_encoder import loaded_text_encoder, save_tokenizer

logger = logging.getLogger(__name__)

MODEL_CLASS = "MusicgenForConditionalGeneration"
MELODY_CLASS = "MusicgenMelodyForConditionalGeneration"
ENCODEC_CLASS = "EncodecModel"
# What the proof accepts (float32). The stacks round their sinusoidal position tables
# differently, a difference that grows with the position: logits differ by ~1e-6 over the
# first 20 frames, by ~1e-4 at 1500 (30 s). So: an absolute bound over the first frames
# (equivalence.EARLY_FRAMES), a bound relative to the logits' scale over all of them, and
# greedy codes identical over all of them.
MAX_ABS_DIFF = 1e-4
MAX_REL_DIFF = 1e-4
# Greedy codes must agree over every frame up to here. Beyond, the stacks may part where two
# codes' logits are closer than their rounding (a near-tie, on a test XP seen once in 1500
# frames): reported, not refused, the logits being bounded over every frame.
STRICT_GREEDY_FRAMES = 250


def greedy_agrees(first_difference: int | None, frames: int) -> bool:
    """Whether greedy codes that first part at ``first_difference`` (None: never) pass."""
    return first_difference is None or first_difference >= min(frames, STRICT_GREEDY_FRAMES)
# frames of one training segment (rows of transformers' position table): 87 min at 50 Hz
MAX_SEGMENT_FRAMES = 1 << 18
POSITIONS_KEY = "decoder.model.decoder.embed_positions.weights"


def refusal(lm_cfg: DictConfig, compression_package: Mapping[str, Any] | None,
            compression_cfg: DictConfig | None) -> str | None:
    """Why this LM cannot be written in transformers' format (one line), or None."""
    if compression_package is None:
        return (f"its EnCodec is part of transformers' model: {setting('compression=none')} "
                "leaves it out")
    if "pretrained" in compression_package or compression_cfg is None:
        return ("its compression model is a //pretrained/ pointer, whose weights the release "
                "does not hold; ship an EnCodec file with "
                f"{setting('compression.path', '<EnCodec checkpoint>')}")
    found = refusals(lm_cfg, compression_cfg)
    return "; ".join(found) if found else None


def write_encodec_files(folder: Path, compression_cfg: DictConfig,
                        compression_state: Mapping[str, Any]) -> dict[str, Any]:
    """An EnCodec-only release's transformers files (``EncodecModel`` with all its
    codebooks); return what the manifest records."""
    import transformers

    problems = encodec_refusals(compression_cfg)
    if problems:
        raise ExportError("; ".join(problems))
    n_q = int(value(compression_cfg, "rvq.n_q"))
    config = transformers.EncodecConfig(**encodec_config_kwargs(compression_cfg, n_q))
    config.architectures = [ENCODEC_CLASS]
    write_folder(folder, config, encodec_state(compression_state, n_q))
    transformers.EncodecFeatureExtractor(
        feature_size=config.audio_channels,
        sampling_rate=config.sampling_rate).save_pretrained(folder)
    return {"model_class": ENCODEC_CLASS, "files": _fsynced(folder)}


def _fsynced(folder: Path) -> list[str]:
    """The transformers files in ``folder``, settled like the rest of the release
    (transformers and safetensors write them without fsync, some 0600)."""
    return settle(folder, sorted(p.name for p in folder.iterdir()
                                 if p.name in TRANSFORMERS_FILES))


def prove_encodec(folder: Path, compression_cfg: DictConfig) -> dict[str, Any]:
    """Load the folder as ``EncodecModel`` and compare it with AudioCraft's compression model
    built from the release: decoding and encoding (on the CPU, in float32)."""
    import transformers
    from audiocraft.models import CompressionModel

    model = _loaded(transformers.EncodecModel, folder)
    with lean_loading():
        ours = CompressionModel.get_pretrained(str(folder / COMPRESSION_FILE), device="cpu")
    figures = encodec_figures(ours.eval(), model, int(value(compression_cfg, "rvq.n_q")))
    if not (figures["encodec_decode_max_abs_diff"] <= MAX_ABS_DIFF
            and figures["encodec_encode_identical_codes"] == 1.0):
        raise ExportError(f"transformers' EncodecModel differs from AudioCraft's: {figures}")
    return {"max_abs_diff_allowed": MAX_ABS_DIFF, **figures}


def text_attribute(lm_cfg: DictConfig) -> str:
    """The LM's T5 conditioner (refusals() made sure there is exactly one)."""
    melody = melody_attributes(lm_cfg)
    if melody is not None:
        return melody[1]
    [attribute] = value(lm_cfg, "fuser.cross")
    return str(attribute)


def t5_name(lm_cfg: DictConfig) -> str:
    """The T5 model the LM's text conditioner was trained with (e.g. ``t5-base``)."""
    return str(value(lm_cfg, f"conditioners.{text_attribute(lm_cfg)}.t5.name"))


def write_musicgen_files(folder: Path, lm_cfg: DictConfig, lm_state: Mapping[str, Any],
                         compression_cfg: DictConfig, compression_state: Mapping[str, Any],
                         text_encoder: str | None, transformers_js: bool = False
                         ) -> dict[str, Any]:
    """Write the transformers files into ``folder``; return what the manifest records. For
    ``transformers_js`` (an ONNX export), the decoder's config names AudioCraft's special token
    as its padding: Transformers.js reads it there (transformers 5.x then notes once per
    process that it lies outside the vocabulary)."""
    import transformers

    encodec_kwargs, encodec = checked_encodec(lm_cfg, compression_cfg, compression_state)
    # the delay pattern's last codebook lags by this many steps (stereo: per channel)
    delay = codec_codebooks(lm_cfg) - 1
    frames = _segment_frames(lm_cfg, encodec_kwargs)
    decoder_kwargs, decoder, projection = checked_decoder(lm_cfg, compression_cfg, lm_state)
    decoder_kwargs["max_position_embeddings"] = max(2048, frames + delay + 1)
    if transformers_js:
        decoder_kwargs["pad_token_id"] = decoder_kwargs["vocab_size"]
    melody = melody_attributes(lm_cfg) is not None
    with loaded_text_encoder(t5_name(lm_cfg), text_encoder) as t5:
        parts: dict[str, Any] = {
            "text_encoder": text_encoder_config(t5.model),
            "audio_encoder": transformers.EncodecConfig(**encodec_kwargs).to_dict()}
        config: Any  # MusicgenMelodyConfig or MusicgenConfig
        if melody:  # the chroma prepended: MusicgenMelody's own classes
            chroma_kwargs, extractor_kwargs = melody_kwargs(lm_cfg)
            config = transformers.MusicgenMelodyConfig(
                **parts, **chroma_kwargs,
                decoder=transformers.MusicgenMelodyDecoderConfig(**decoder_kwargs).to_dict())
        else:
            config = transformers.MusicgenConfig(
                **parts, decoder=transformers.MusicgenDecoderConfig(**decoder_kwargs).to_dict())
        # what save_pretrained of the model writes: the Hub and Transformers.js read it
        config.architectures = [MELODY_CLASS if melody else MODEL_CLASS]
        text_state = {k: v.detach().clone().contiguous()
                      for k, v in t5.model.state_dict().items()}
        state = musicgen_state(decoder, projection, encodec, text_state)
        state[POSITIONS_KEY] = _position_table(melody, decoder_kwargs["max_position_embeddings"],
                                               decoder_kwargs["hidden_size"])
        write_folder(folder, config, state)
        # the delay pattern needs `delay` steps beyond the frames of one training segment
        transformers.GenerationConfig(**generation_kwargs(lm_cfg),
                                      max_new_tokens=frames + delay).save_pretrained(folder)
        if melody:  # the chroma of the user's melody (or of demucs' stems they give)
            transformers.MusicgenMelodyFeatureExtractor(**extractor_kwargs).save_pretrained(
                folder)
        else:
            transformers.EncodecFeatureExtractor(
                feature_size=audio_channels(lm_cfg),  # the user's audio: stereo for stereo
                sampling_rate=encodec_kwargs["sampling_rate"]).save_pretrained(folder)
        _name_the_processor(folder / "preprocessor_config.json",
                            "MusicgenMelodyProcessor" if melody else "MusicgenProcessor")
        save_tokenizer(t5, folder)
    return {"model_class": MELODY_CLASS if melody else MODEL_CLASS, "text_encoder": t5.origin,
            "files": _fsynced(folder)}


def _position_table(melody: bool, positions: int, dim: int) -> Any:
    """The decoder's sinusoidal position table as transformers computes it. 4.44 to 4.48 keep
    it as a parameter and say of a folder without it that it was "newly initialized ... You
    should probably TRAIN this model"; later releases recompute it and skip the key."""
    from transformers.models.musicgen import modeling_musicgen
    from transformers.models.musicgen_melody import modeling_musicgen_melody

    table = (modeling_musicgen_melody.MusicgenMelodySinusoidalPositionalEmbedding if melody
             else modeling_musicgen.MusicgenSinusoidalPositionalEmbedding)
    return table.get_embedding(positions, dim).contiguous()


def _segment_frames(lm_cfg: DictConfig, encodec_kwargs: Mapping[str, Any]) -> int:
    """The frames of one training segment: transformers' position table holds them (and
    generation makes as many by default), so they are bounded before anything is built."""
    hop = math.prod(encodec_kwargs["upsampling_ratios"])
    seconds = value(lm_cfg, "dataset.segment_duration")
    seconds = seconds if isinstance(seconds, (int, float)) else 30.0
    try:
        frames = float(seconds) * encodec_kwargs["sampling_rate"] / hop
        rate = encodec_kwargs["sampling_rate"] / hop
    except OverflowError:  # an integer beyond any float
        frames = rate = math.inf
    if not (math.isfinite(frames) and 1 <= frames <= MAX_SEGMENT_FRAMES):
        raise ExportError(f"dataset.segment_duration={shown(seconds)} s at {rate:g} frames/s "
                          f"is {frames:g} frames: transformers' position table and generation "
                          f"config are made for 1 to {MAX_SEGMENT_FRAMES:,}")
    return int(frames)


def _name_the_processor(path: Path, processor_class: str) -> None:
    """The Hub's layout: AutoProcessor finds the processor class through the feature
    extractor's file (5.x's processor_config.json would break 4.44)."""
    content = json.loads(path.read_text())
    content["processor_class"] = processor_class
    write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", path)


def prove_musicgen(folder: Path, lm_cfg: DictConfig, lm: Any, compression_model: Any,
                   frames: int | None = None) -> dict[str, Any]:
    """Load the folder with transformers and compare it with AudioCraft's ``lm`` and
    ``compression_model`` (built from the same release): decoder logits, EnCodec decoding and
    encoding, greedy decoding (with and without guidance, for other conditions, which must
    change both stacks' codes), and the text-to-audio pipeline, over ``frames`` frames (default:
    as many as ``generation_config.json`` generates). Raises ExportError when they differ."""
    import transformers

    melody = melody_attributes(lm_cfg)
    model = _loaded(transformers.MusicgenMelodyForConditionalGeneration if melody
                    else transformers.MusicgenForConditionalGeneration, folder)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    # the EnCodec codes each audio channel with the LM's codebooks of that channel
    n_q = model.decoder.config.num_codebooks // model.decoder.config.audio_channels
    # generation_config.json's length holds the delay pattern's n_q - 1 steps beyond the frames
    generated = int(model.generation_config.max_new_tokens) - (n_q - 1)
    frames = generated if frames is None else frames
    if frames > generated:  # the card would say "1600 of the 1500 it generates"
        raise ExportError(f"{setting('validate.transformers_frames', frames)} is more than the "
                          f"{generated} frames generation_config.json generates")
    logger.info("comparing logits and greedy decoding over %d of the %d frames "
                "generation_config.json generates, in both stacks (float32, on the CPU)",
                frames, generated)
    coef = float(value(lm_cfg, "classifier_free_guidance.inference_coef"))
    figures: dict[str, Any] = encodec_figures(compression_model, model.audio_encoder, n_q)
    if melody:
        figures.update(melody_figures(lm, model, processor, *melody, coef,
                                      model.config.audio_encoder.sampling_rate,
                                      frames=frames))
    else:
        [attribute] = value(lm_cfg, "fuser.cross")
        figures.update(lm_figures(lm, model, attribute, coef, frames=frames))
    figures["generation_frames"] = generated
    problems = [name for name in ("lm_logits_max_abs_diff_early", "encodec_decode_max_abs_diff")
                if not figures[name] <= MAX_ABS_DIFF]
    if not figures["lm_logits_max_rel_diff"] <= MAX_REL_DIFF:
        problems.append("lm_logits_max_rel_diff")
    if figures["encodec_encode_identical_codes"] != 1.0:
        problems.append("encodec_encode_identical_codes")
    if not greedy_agrees(figures["greedy_first_difference"], frames):
        problems += [name for name in figures if name.startswith("greedy_identical_frames")
                     and figures[name] != frames] or ["greedy_first_difference"]
    # a stack that ignores its conditioning gives the same codes for other conditions
    problems += [name for name in ("other_text_changes_codes", "other_melody_changes_codes")
                 if figures.get(name) is False]
    if figures.get("chroma_identical_frames", 0) != figures.get("chroma_frames", 0):
        problems.append("chroma_identical_frames")
    if not melody:  # transformers' text-to-audio pipeline takes no melody
        figures.update(_pipeline_audio(folder, model.config.audio_encoder.sampling_rate))
    if problems:
        raise ExportError("transformers' model differs from AudioCraft's: " + ", ".join(
            f"{name} {figures[name]}" for name in problems)
            + _unconditioned(melody, problems, figures))
    return {"max_abs_diff_allowed": MAX_ABS_DIFF, "max_rel_diff_allowed": MAX_REL_DIFF,
            "transformers_version": transformers.__version__, **figures}


def _unconditioned(melody: Any, problems: list[str], figures: Mapping[str, Any]) -> str:
    """What a melody model's conditioning check failing means when its logits agree: the
    stack's generate() drops the conditioning its forward pass uses."""
    import transformers

    logits = {"lm_logits_max_abs_diff_early", "lm_logits_max_rel_diff"}
    if not melody or figures.get("other_text_changes_codes") is not False \
            or logits & set(problems):
        return ""
    return (f" (transformers {transformers.__version__}'s MusicgenMelody.generate ignores its "
            "text and melody while its logits agree: transformers issue #45647, seen on "
            "4.57.6; 4.44.2 to 4.52.4 and 5.24.0 were proven: export with one of those)")


def prove_release(folder: Path, lm_cfg: DictConfig, frames: int | None = None) -> dict[str, Any]:
    """Build AudioCraft's models from the release with its loaders, then :func:`prove_musicgen`.
    On the CPU, in float32, whatever validate.device says: the loaders would build a float16
    model elsewhere, which the 1e-4 bound does not hold for."""
    from audiocraft.models import loaders

    with lean_loading():
        compression_model = loaders.load_compression_model(folder, device="cpu")
        lm = loaders.load_lm_model(folder, device="cpu")
    return prove_musicgen(folder, lm_cfg, lm.eval(), compression_model.eval(), frames)


def _loaded(model_class: Any, folder: Path) -> Any:
    """:func:`load_strictly`, its failure one line (the refusals should have caught it)."""
    try:
        return load_strictly(model_class, folder)
    except (OSError, ValueError) as exc:
        raise ExportError(f"transformers could not load the folder as {model_class.__name__}: "
                          f"{first_line(exc)}") from exc


def _pipeline_audio(folder: Path, sample_rate: int) -> dict[str, Any]:
    """``pipeline("text-to-audio", model=folder)``: finite audio at the model's rate."""
    import torch
    import transformers

    frames = 10
    speech = transformers.pipeline("text-to-audio", model=str(folder))(
        "a short test", forward_params={"do_sample": False, "max_new_tokens": frames})
    audio = torch.as_tensor(speech["audio"])
    if speech["sampling_rate"] != sample_rate or not bool(torch.isfinite(audio).all()):
        raise ExportError(f"pipeline('text-to-audio') gave audio at {speech['sampling_rate']} "
                          f"Hz (expected {sample_rate}) or non-finite samples")
    return {"pipeline_sampling_rate": speech["sampling_rate"],
            "pipeline_samples": int(audio.shape[-1])}
