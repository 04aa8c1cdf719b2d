"""The release's model card (``README.md``), generated from its manifest alone.

The Hugging Face Hub renders a repository's README.md as its model card and reads the YAML
front matter (library, pipeline, license, tags). Every sentence here is a template filled from
:class:`~.manifest.Manifest`: no per-release hand-written text, and nothing the manifest does
not record (so nothing private when paths are recorded relative). A value that comes from the
checkpoint, its config or a user's folder is shown through :mod:`.card_text`, inert.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ..errors import one_line
from ..families import FAMILIES
from ..writing.release_format import COMPRESSION_FILE, LM_FILE
from .card_text import code, fenced, literal, more
from .finetune import finetune_command
from .manifest import Manifest, WeightsRecord
from .onnx_card import onnx_section, parted

UNSET_LICENSE = "unknown"
MAX_LISTED = 12  # metrics, conditioners... listed in the card; the rest are counted
MAX_NAME = 64  # characters of a metric name shown
MAX_TAG = 64  # characters of a front-matter value
# what each level proves, as the README's Validation section says it
PROOFS = {
    "full": "the files hold exactly what was written; stock AudioCraft's `get_pretrained` "
            "loads the folder and every tensor equals the source checkpoint's bit for bit; the "
            "model generates audio of the right shape with finite samples",
    "load": "the files hold exactly what was written; AudioCraft's loaders rebuild the models "
            "and every tensor equals the source checkpoint's bit for bit",
    "none": "nothing (validation was turned off)",
}
FAMILY_TAGS = {"musicgen": ["music-generation"], "audiogen": ["sound-generation"],
               "magnet": ["music-generation", "magnet"], "audio_magnet": ["sound-generation",
                                                                          "magnet"]}


def render_model_card(manifest: Manifest) -> str:
    """The model card of a release, as Markdown with Hugging Face front matter."""
    model = manifest.model
    is_lm = model is not None and model.is_lm
    parts = [_front_matter(manifest, is_lm), _title(manifest, is_lm), _license_note(manifest),
             _model_section(manifest, is_lm), _training_section(manifest),
             _samples_section(manifest), _usage_section(manifest, is_lm),
             _transformers_section(manifest),
             _finetune_section(manifest, is_lm), _provenance_section(manifest),
             _validation_section(manifest)]
    return "\n".join(part for part in parts if part)


def _front_matter(m: Manifest, is_lm: bool) -> str:
    family = m.source.solver or "unknown"
    text_conditioned = is_lm and m.model is not None and any(
        kind.split()[0] in ("t5", "lut") for kind in m.model.conditioners.values())
    tags = ["audiocraft", family, *FAMILY_TAGS.get(family, []),
            *(["transformers"] if m.transformers else [])]
    if not is_lm:
        tags += ["encodec", "audio-tokenizer"]
    lines = ["---", "library_name: audiocraft"]
    if text_conditioned:
        lines.append("pipeline_tag: text-to-audio")
    lines.append(f"license: {_yaml_scalar(m.license or UNSET_LICENSE)}")
    lines += ["tags:", *(f"- {_yaml_scalar(t)}" for t in dict.fromkeys(tags)), "---", ""]
    return "\n".join(lines)


def _yaml_scalar(value: str) -> str:
    # a JSON string is a YAML string: quoted, escaped, on one line (a "---" stays inside it)
    return json.dumps(one_line(value, MAX_TAG))


def _title(m: Manifest, is_lm: bool) -> str:
    what = (m.model.model_class if m.model and m.model.model_class
            else f"{code(m.source.solver)} model") if is_lm else "EnCodec compression model"
    return f"# {code(m.source.name)}: {what} trained with AudioCraft\n"


def _license_note(m: Manifest) -> str:
    if m.license:
        return ""
    return ("> **License not set.** Choose the license of these weights and export again with "
            "`output.license=<id>` (a Hugging Face license identifier), or edit the "
            "`license:` line above before sharing.\n")


def _params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit} ({n:,})"
    return str(n)


def _rows(rows: list[tuple[str, Any]]) -> str:
    # a "|" in a cell, code spans included, would start another cell: escaped
    body = [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows
            if value not in (None, "", [])]
    return "\n".join(["| | |", "| --- | --- |", *body]) + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _model_section(m: Manifest, is_lm: bool) -> str:
    model = m.model
    if model is None:
        return ""
    loader = f"`audiocraft.models.{model.model_class}`" if model.model_class else None
    codebooks = None
    if model.codebooks is not None:
        codebooks = f"{model.codebooks} x {model.card} entries"
        if model.frame_rate is not None:
            codebooks += f" at {model.frame_rate:g} frames/s"
        if model.codebooks_pattern:
            codebooks += f", {code(model.codebooks_pattern)} pattern"
    transformer = None
    if is_lm and model.dim is not None:
        transformer = f"dim {model.dim}, {model.num_layers} layers, {model.num_heads} heads"
    audio = None
    if model.sample_rate is not None:
        audio = f"{model.sample_rate} Hz, {model.channels} channel(s)"
        if model.interleaved_stereo and model.codebooks is not None:
            audio += (f": stereo, its {model.codebooks} codebooks alternating between the left "
                      f"and right channels ({model.codebooks // 2} each, AudioCraft's "
                      "`interleave_stereo_codebooks`), each channel coded by the mono EnCodec")
    conditioners = list(model.conditioners.items())
    conditioning = ", ".join(f"{code(a)}: {code(k)}" for a, k in conditioners[:MAX_LISTED]) \
        + more(min(len(conditioners), MAX_LISTED), len(conditioners)) if is_lm else None
    compression = None
    if m.compression is not None:
        compression = code(m.compression.reference) + (
            pointer_note(m.compression.pretrained) if m.compression.pretrained
            else f", shipped as `{COMPRESSION_FILE}`")
    rows = [("Family", f"{code(model.family)}, loaded with {loader}"),
            ("Parameters", _params(m.state.parameters)),
            ("Weights", ", ".join(f"{n} x {d}" for d, n in m.state.dtypes.items())),
            ("Transformer", transformer), ("Audio", audio), ("Codebooks", codebooks),
            ("Conditioning", conditioning or ("none" if is_lm else None)),
            ("Classifier-free guidance", model.cfg_coef),
            ("Training segments", f"{model.segment_duration:g} s"
             if model.segment_duration is not None else None),
            ("Compression model", compression)]
    return "## Model\n\n" + _rows(rows)


# CompressionModel.get_pretrained(name) builds these names in AudioCraft's own code
# (audiocraft/models/encodec.py); any other name is fetched from the Hugging Face Hub
BUILT_IN = {
    "debug_compression_model": " (a pointer, not a download: AudioCraft builds it in code "
    "with random weights, `builders.get_debug_compression_model`, new ones at every load; "
    "for tests only)",
    "dac_44khz": " (a pointer: AudioCraft builds Descript's DAC, whose `dac` package "
    "downloads its weights, not from the Hugging Face Hub)",
    "dac_24khz": " (a pointer: AudioCraft builds Descript's DAC, whose `dac` package "
    "downloads its weights, not from the Hugging Face Hub)",
}


def pointer_note(name: str) -> str:
    """How AudioCraft gets a //pretrained/ compression model by ``name``."""
    return BUILT_IN.get(name, " (a pointer: AudioCraft fetches it by name from the Hugging "
                              "Face Hub, as transformers' `EncodecModel`)")


def _training_section(m: Manifest) -> str:
    t = m.training
    if t is None or t.epochs == 0:
        return ""
    lines = ["## Training\n", f"{t.epochs} epoch(s) trained."]
    if t.best_metric is not None and t.best_value is not None:
        lines[-1] += (f" Best valid `{t.best_metric}` {t.best_value:.4g} at epoch "
                      f"{t.best_epoch} (the rule AudioCraft picks its best state by).")
    metrics = list(dict.fromkeys([*t.last.get("valid", {}), *t.last.get("train", {})]))
    if metrics:
        listed = metrics[:MAX_LISTED]
        lines += ["", "Last epoch" + more(len(listed), len(metrics) + t.omitted) + ":", "",
                  "| metric | train | valid |", "| --- | --- | --- |"]
        lines += [f"| {_cell(code(name, MAX_NAME))} | {_num(t.metric(name, 'train'))} | "
                  f"{_num(t.metric(name))} |" for name in listed]
    if m.curves:
        lines += ["", f"![Training curves]({m.curves})"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _samples_section(m: Manifest) -> str:
    if not m.samples:
        return ""
    lines = ["## Listen\n", *_made_with(m.samples[0].get("generation")), ""]
    for s in m.samples:
        what = (code(s["description"]) if s["name"] == "text"
                else f"{code(s['description'])} with the melody of **melody_prompt**"
                if s["name"] == "melody" else s["description"] or "no conditioning")
        clipped = s.get("clipped_samples")
        lines += [f"**{s['name']}**: {what} ({s['seconds']:g} s, {s['sample_rate']} Hz"
                  + (f"; {clipped:,} samples clipped by the normalisation" if clipped else "")
                  + ")", "",
                  f'<audio controls src="{s["audio"]}"></audio>', "",
                  f"![Spectrogram of {s['name']}]({s['spectrogram']})", ""]
    return "\n".join(lines)


def _made_with(generation: dict[str, Any] | None) -> list[str]:
    """What the samples were generated and written with, as the manifest records it."""
    if not generation:
        return []
    xp = generation["settings"] == "xp"
    whose = ("the XP's own settings (`xp.cfg`'s "
             + ("`generate.lm`, `generate.audio`)" if generation["params"] else
                "`generate.audio`)") if xp else "stock AudioCraft's default settings")
    params = ", ".join(code(f"{k}={_py(v)}") for k, v in generation["params"].items())
    audio = ", ".join(code(f"{k}={_py(v)}") for k, v in generation["audio"].items())
    lines = [f"Made with {whose}: "
             + (f"`set_generation_params` with {params}, " if params else "")
             + f"`torch.manual_seed({generation['seed']})` before each clip; written as "
             f"AudioCraft's `audio_write` writes them (16-bit WAV), normalised with {audio}."]
    notes = generation.get("defaults") or []
    if notes:
        lines += ["", "AudioCraft's default replaced these XP settings:", "",
                  *(f"- {code(note)}" for note in notes[:MAX_LISTED]),
                  *([f"- ({len(notes) - MAX_LISTED} more)"] if len(notes) > MAX_LISTED
                    else [])]
    return lines


def _py(value: Any) -> str:
    """A setting (a bool, number, string or list of them, checked when read) as Python."""
    return literal(value) if isinstance(value, str) else repr(value)


def _usage_section(m: Manifest, is_lm: bool) -> str:
    folder = m.release
    if not is_lm:
        path = literal(f"{folder}/{COMPRESSION_FILE}")
        snippet = ["import torch", "from audiocraft.models import CompressionModel", "",
                   f"model = CompressionModel.get_pretrained({path})",
                   "# one second of audio (use your own): [batch, channels, samples]",
                   "wav = 0.1 * torch.randn(1, model.channels, model.sample_rate)",
                   "codes, scale = model.encode(wav)",
                   "audio = model.decode(codes, scale)"]
        return "\n".join(["## Use it\n", "With AudioCraft installed:", "",
                          *fenced(snippet, "python"), ""])
    assert m.model is not None  # an LM has its model facts
    cls = m.model.model_class
    generation = next((s["generation"] for s in m.samples if s.get("generation")), None)
    text = next((s["description"] for s in m.samples if s["name"] == "text"), None)
    prompt = (literal(text or "warm lo-fi piano with soft drums")
              if m.model.conditioners else None)
    if generation:
        args = ", ".join(f"{k}={_py(v)}" for k, v in generation["params"].items())
        settings = [f"model.set_generation_params({args})  # as samples/ were made",
                    f"torch.manual_seed({generation['seed']})"]
    else:
        settings = ["model.set_generation_params(duration=8)" if cls != "MAGNeT" else
                    "model.set_generation_params()"]
    family = FAMILIES.get(m.model.family or "")
    short = family is not None and family.max_duration is not None \
        and family.extend_stride is not None and m.model.segment_duration is not None \
        and m.model.segment_duration <= family.extend_stride
    if short:  # stock get_pretrained refuses it: the model is built from its loaders
        assert family is not None
        loading = [
            f"# trained on {m.model.segment_duration:g} s segments: {cls}.get_pretrained "
            f"refuses it (its {family.extend_stride:g} s",
            "# extend_stride must be shorter), so the model is built from the loaders",
            f"folder = {literal(folder)}  # this folder",
            f"model = {cls}(folder, loaders.load_compression_model(folder), "
            f"loaders.load_lm_model(folder),",
            f"              max_duration={family.max_duration:g})"]
    else:
        loading = [f"model = {cls}.get_pretrained({literal(folder)})  # this folder"]
    melody = next((s["audio"] for s in m.samples if s["name"] == "melody_prompt"), None)
    with_melody = [  # MusicGen-melody: text and the melody of an audio file
        "# and with a melody (here the one its samples were made with):",
        f"melody, sample_rate = audio_read({literal(f'{folder}/{melody}')})",
        f"wav = model.generate_with_chroma([{prompt}], melody[None], sample_rate)",
    ] if melody and prompt else []
    snippet = [*(["import torch"] if generation else []),
               f"from audiocraft.models import {cls}" + (", loaders" if short else ""),
               *(["from audiocraft.data.audio import audio_read"] if with_melody else []), "",
               *loading, *settings,
               f"wav = model.generate([{prompt}])" if prompt else
               "wav = model.generate_unconditional(1)", *with_melody]
    return "\n".join(["## Use it\n", "With AudioCraft installed:", "",
                      *fenced(snippet, "python"), ""])


def _transformers_section(m: Manifest) -> str:
    hf = m.transformers
    if hf is None:
        return ""
    folder = m.release
    proof = hf.get("proof")
    if hf["model_class"] == "EncodecModel":
        lines = ["## Use it with 🤗 transformers\n", "This folder is also an `EncodecModel`:",
                 "", "```python", "from transformers import AutoFeatureExtractor, EncodecModel",
                 "", f"model = EncodecModel.from_pretrained({literal(folder)})",
                 f"features = AutoFeatureExtractor.from_pretrained({literal(folder)})",
                 "codes = model.encode(**features(raw_audio=wav, sampling_rate=features."
                 'sampling_rate, return_tensors="pt")).audio_codes', "```", ""]
        if proof:
            lines += ["Proven equal to AudioCraft's model when exported (float32): decoding "
                      f"differs by at most {proof['encodec_decode_max_abs_diff']:.2g}, encoding "
                      f"gives {proof['encodec_encode_identical_codes']:.0%} identical codes.", ""]
        return "\n".join(lines)
    cls = hf["model_class"]
    melody = cls == "MusicgenMelodyForConditionalGeneration"
    lines = ["## Use it with 🤗 transformers\n",
             f"This folder is also a `{cls}` (text encoder {code(hf['text_encoder'])}):", "",
             "```python", f"from transformers import AutoProcessor, {cls}", "",
             f"processor = AutoProcessor.from_pretrained({literal(folder)})",
             f"model = {cls}.from_pretrained({literal(folder)})",
             *(["# a melody: [samples] at the model's rate (or demucs' stems, [batch, stems, "
                "channels, samples]); transformers runs no demucs itself",
                "melody, sample_rate = ...",
                'inputs = processor(text=["warm lo-fi piano with soft drums"], audio=melody, '
                'sampling_rate=sample_rate,',
                '                   return_tensors="pt")'] if melody else
               ['inputs = processor(text=["warm lo-fi piano with soft drums"], '
                'return_tensors="pt")']),
             "audio = model.generate(**inputs, max_new_tokens=256)", "```", ""]
    if proof:
        lines += _lm_proof(proof, melody)
    if "onnx" in hf:
        lines += onnx_section(hf["onnx"], folder)
    return "\n".join(lines)


def _lm_proof(proof: Mapping[str, Any], melody: bool) -> list[str]:
    """The transformers proof of an LM, as the card states it: what it covered, then each
    comparison."""
    frames, generated = proof["greedy_frames"], proof.get("generation_frames")
    scope = ("" if generated is None else " (the length `generation_config.json` generates)"
             if frames == generated else f" of the {generated} `generation_config.json` "
             "generates (`validate.transformers_frames`)")
    version = (f", transformers {proof['transformers_version']}"
               if proof.get("transformers_version") else "")
    early = proof.get("lm_logits_early_frames")
    logits = (f"at most {proof['lm_logits_max_abs_diff_early']:.2g} apart over the first "
              f"{early} frames; over all {frames}, at most {proof['lm_logits_max_abs_diff']:.2g} "
              f"({proof['lm_logits_max_rel_diff']:.2g} of their scale: the stacks round their "
              "sinusoidal position tables differently, a difference that grows with the "
              f"position), the same most likely code {proof['lm_logits_argmax_agreement']:.2%} "
              "of the time" if early is not None
              else f"at most {proof['lm_logits_max_abs_diff']:.2g} apart")
    lines = [f"Proven equal to AudioCraft's model when exported (float32{version}), over "
             f"{frames} frames{scope}:", "",
             f"- decoder logits on the same codes: {logits};",
             f"- greedy decoding: {proof['greedy_identical_frames']} of {frames} identical "
             f"frames{_greedy_runs(proof)}{parted(proof)};",
             f"- EnCodec: decoding differs by at most {proof['encodec_decode_max_abs_diff']:.2g}, "
             f"encoding gives {proof['encodec_encode_identical_codes']:.0%} identical codes;"]
    if melody:
        lines.append(f"- the chroma of the same demucs stems: {proof['chroma_identical_frames']} "
                     f"of {proof['chroma_frames']} identical frames;")
    if "pipeline_sampling_rate" in proof:
        lines.append("- `pipeline(\"text-to-audio\")` produces audio at "
                     f"{proof['pipeline_sampling_rate']} Hz;")
    lines[-1] = lines[-1][:-1] + "."
    return [*lines, ""]


def _greedy_runs(proof: Mapping[str, Any]) -> str:
    """The greedy runs beyond the guided one, when the proof made them."""
    if "greedy_identical_frames_other_text" not in proof:
        return ""
    frames = proof["greedy_frames"]
    return (f" with guidance {proof['greedy_guidance_scale']:g} (the XP's), "
            f"{proof['greedy_identical_frames_no_guidance']} of {frames} without guidance, "
            f"{proof['greedy_identical_frames_other_text']} of {frames} for another text, "
            "which changes the codes of both ("
            + ("so neither drops its conditioning" if proof["other_text_changes_codes"]
               else "it did not") + ")"
            + (f", {proof['greedy_identical_frames_other_melody']} of {frames} for another "
               "melody, which changes them too" if proof.get("other_melody_changes_codes")
               else ""))


def _finetune_section(m: Manifest, is_lm: bool) -> str:
    if not is_lm or m.compression is None or LM_FILE not in m.files:
        return ""
    solver = m.source.solver_config or "<the XP's solver config>"
    # absolute: audiocraft's training runs inside its own XP folder; the shell fills $PWD in
    command = finetune_command(f"$PWD/{PurePosixPath(m.release).name}", solver,
                               m.source.argv or [])
    return "\n".join([
        "## Fine-tune with AudioCraft\n",
        "AudioCraft's own training continues from this release, from the folder that holds "
        "it (the training needs the release's absolute path: the shell's `$PWD` gives it). "
        "The model is built from the solver config and overrides the XP was trained with "
        + ("(its Dora `.argv.json`)" if m.source.argv else
           "(not recorded: give the same model settings as the XP)")
        + "; change data and optimisation settings as you need. The compression model is "
        "the one shipped here, so the original XP and its Dora dir are not needed:", "",
        *fenced([" ".join(["dora -P audiocraft run", *map(_shell_word, command)])], "bash"),
        "", _source_tree_note(m.versions.get("audiocraft")), ""])


def _source_tree_note(version: str | None) -> str:
    """What the recipe needs besides the release: AudioCraft's config/ tree, which its wheel
    leaves out (``dora -P audiocraft`` then fails with MissingConfigException)."""
    at = f" ({code(version)})" if version else ""
    tag = f"--branch v{version} " if version and re.fullmatch(r"[\w.+-]+", version) else ""
    sdist = f"=={version}" if tag else ""
    return ("It needs AudioCraft's source tree, not only its package: the training reads its "
            "solver configs from AudioCraft's `config/` folder, which the pip wheel does not "
            "include (from a pip install alone, `dora` fails with `MissingConfigException`). "
            f"Get the source of the AudioCraft version this release was made with{at}, either with "
            f"`git clone {tag}https://github.com/facebookresearch/audiocraft` or by unpacking "
            f"`pip download --no-binary :all: --no-deps audiocraft{sdist}`, and run the command "
            "from its top folder with `PYTHONPATH=.` so that its package, next to its "
            "`config/`, is the one imported.")


def _shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell when needed, keeping ``$PWD`` expandable."""
    if re.fullmatch(r"[\w@%+=:,./$-]*", word) and "$" not in word.replace("$PWD", ""):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _provenance_section(m: Manifest) -> str:
    s = m.source
    rows = [("Source", code(s.path) + (f" (XP {code(s.xp_sig)})" if s.xp_sig else "")),
            *([("Weights", _weights_provenance(s.weights))] if s.weights else []),
            ("State", f"{code(m.state.key)} (state={m.state.selected}, dtype={m.state.dtype})"),
            *((f"`{name}`", f"{f.bytes:,} bytes, sha256 `{f.sha256}`")
              for name, f in m.files.items()),
            ("Made with", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
            ("Config repairs", "; ".join(code(r) for r in m.repairs)),
            ("Paths", "relative to the Dora dir" if m.record_paths == "relative"
             else "as given (absolute)")]
    return "## Provenance\n\n" + _rows(rows)


def _weights_provenance(w: WeightsRecord) -> str:
    """Where input=weights came from and what the base gave."""
    what = {"state dict": "a state dict", "transformers": "a transformers MusicGen folder",
            "peft adapter": "a PEFT adapter"}.get(w.kind, code(w.kind))
    if w.wrapper:
        what += f" (under {code(w.wrapper)})"
    if w.prefix:
        what += f", names prefixed {code(w.prefix)}"
    if w.adapter:
        facts = ", ".join(f"{k}={v}" for k, v in w.adapter.items()
                          if k in ("peft_type", "r", "lora_alpha"))
        what += f" ({code(facts)}) merged into the base's transformers model with peft"
    return (f"{what}, trained outside AudioCraft's solvers and checked tensor by tensor "
            f"against the base {code(w.base)} ({w.base_kind}), which gave `xp.cfg` and the "
            f"compression model; EnCodec: {w.encodec}"
            + (f"; text encoder: {w.text_encoder}" if w.text_encoder else ""))


def _validation_section(m: Manifest) -> str:
    v = m.validation
    if v is None:
        return ""
    lines = ["## Validation\n",
             f"`validate={v.level}` proved {PROOFS.get(v.level, v.level)}.", ""]
    for check in v.checks:
        extra = f" ({check.model_class})" if check.model_class else ""
        lines.append(f"- `{check.check}`{extra}: {'ok' if check.ok else 'FAILED'}")
    lines += [f"- skipped: {s}" for s in v.skipped]
    if v.compression_stand_in:
        lines.append("- validated with the local compression model "
                     f"{code(v.compression_stand_in)}")
    return "\n".join(lines) + "\n"
