#!/usr/bin/env python3
"""Build a tiny but REAL T5 named `t5-small` into a Hugging Face cache folder, for tests.

Random weights, a sentencepiece unigram vocabulary trained here on generated sentences
(300 pieces + T5's 100 `<extra_id_*>`), `d_model` 512 (audiocraft's `T5Conditioner` takes the
width of `t5-small` from its MODELS_DIMS), 2 encoder + 2 decoder layers, small heads and d_ff:
about 6 MB. Nothing downloads. With

    HF_HOME=<printed folder> HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

`T5Tokenizer.from_pretrained("t5-small")`, `T5EncoderModel.from_pretrained("t5-small")` and
audiocraft's `T5Conditioner(name="t5-small", ...)` load it by name (transformers 4.44 and 5.x).

    python scripts/tiny_t5.py [--out DIR] [--force]

The last stdout line is the HF_HOME folder. It is a cache keyed by this file's sha256, under
AUDIOCRAFT_EXT_CACHE (default ~/.cache/audiocraft-ext), like train_fixtures.py. The files are
the same bytes on every build: the vocabulary, the weights and the JSON files are made here,
not by transformers' (version-dependent) initialisers and writers; only tokenizer.json comes
from transformers' slow-to-fast converter (it needs `protobuf`).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

REPO = "t5-small"
SCRIPT = Path(__file__).resolve()
SEED = 1234
N_PIECES = 300  # sentencepiece vocabulary; T5 adds its extra ids on top
N_EXTRA_IDS = 100
N_SENTENCES = 600
# t5-small's width (audiocraft's MODELS_DIMS); the rest is shrunk so it builds in seconds.
CONFIG = {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "d_model": 512,
    "d_kv": 16,
    "num_heads": 4,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "vocab_size": N_PIECES + N_EXTRA_IDS,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "relu",
    "is_encoder_decoder": True,
    "tie_word_embeddings": True,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
SPECIAL = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
# made-up artist names: enough distinct words for a 300-piece vocabulary
SYLLABLES = "ka lo mi ne ru ta vo zi be da fu go hi ja ke la mo nu pa ri so te wu ya".split()
EXTRA_IDS = [f"<extra_id_{i}>" for i in range(N_EXTRA_IDS)]

WORDS = {
    "adj": ["calm", "bright", "dark", "warm", "heavy", "gentle", "fast", "slow", "dreamy",
            "happy", "sad", "epic", "quiet", "loud", "funky", "groovy", "lush", "raw"],
    "genre": ["ambient", "rock", "jazz", "techno", "folk", "drone", "pop", "classical",
              "hip hop", "reggae", "blues", "house", "metal", "lofi", "orchestral"],
    "inst": ["piano", "guitar", "drums", "bass", "synth", "violin", "flute", "trumpet",
             "organ", "cello", "strings", "choir", "saxophone", "harp", "bells"],
    "sound": ["a dog barking", "rain on a roof", "a humming machine", "birds singing",
              "a car passing", "footsteps on gravel", "waves crashing", "wind in the trees",
              "a door closing", "people talking", "a clock ticking", "thunder rolling"],
    "extra": ("air answer beat bird boat bridge broken camera candle chorus cloud color "
              "corner country crowd dance desert dream engine evening feather festival field "
              "fire flower forest friend garden ghost glass harbor heart highway island "
              "journey kitchen ladder lantern letter light machine market memory mirror "
              "morning mountain neon ocean orbit paper party pattern planet pocket rhythm "
              "river rocket shadow silver sky smoke snow spark spring station stone storm "
              "summer sunset thunder timber tower train travel valley velvet village voice "
              "water whisper window winter wonder yellow zebra").split(),
    "place": ["in a small room", "in a cathedral", "outdoors", "in the city", "at night",
              "by the sea", "in a forest", "on a busy street", "in a studio"],
}


def log(msg: str) -> None:
    print(f"[tiny_t5] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("AUDIOCRAFT_EXT_CACHE",
                               Path.home() / ".cache" / "audiocraft-ext")).expanduser()


def default_out() -> Path:
    return cache_root() / f"tiny-t5-{hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]}"


def sentences(n: int = N_SENTENCES, seed: int = SEED) -> list[str]:
    """Music and sound descriptions, the kind of text MusicGen and AudioGen are given."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = {k: rng.choice(v) for k, v in WORDS.items()}
        w["extra2"] = rng.choice(WORDS["extra"])
        bpm = rng.randrange(60, 180, 5)
        artist = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        out.append(f"by {artist}: " + [
            f"{w['adj']} {w['genre']} song with {w['inst']} at {bpm} bpm, {w['extra']}",
            f"a {w['adj']} {w['inst']} melody {w['place']}, {w['extra']} {w['extra2']}",
            f"{w['sound']} {w['place']} like a {w['extra']} and {rng.choice(WORDS['extra'])}",
            f"{w['genre']} track, {w['adj']} mood, {w['inst']} and {rng.choice(WORDS['inst'])}"
            f", the {w['extra2']} of the {w['extra']}",
        ][i % 4])
    return out


def train_spiece() -> bytes:
    """A sentencepiece unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences()), model_writer=model, vocab_size=N_PIECES,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, shuffle_input_sentence=False,  # both for identical bytes
        character_coverage=1.0, minloglevel=2)
    return model.getvalue()


def tensor_names(config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor, from the model transformers builds (its tied
    copies of the shared embedding left out, as save_pretrained leaves them out)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(**config))
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}


def init_std(name: str, shape: tuple[int, ...], config: dict) -> float:
    """T5's own initialisation scales (T5PreTrainedModel._init_weights, factor 1)."""
    d, kv, h, ff = config["d_model"], config["d_kv"], config["num_heads"], config["d_ff"]
    if name == "shared.weight":
        return 1.0
    if name.endswith((".q.weight",)):
        return (d * kv) ** -0.5
    if name.endswith((".k.weight", ".v.weight", "relative_attention_bias.weight")):
        return d ** -0.5
    if name.endswith(".o.weight"):
        return (h * kv) ** -0.5
    if name.endswith(".wi.weight"):
        return d ** -0.5
    if name.endswith(".wo.weight"):
        return ff ** -0.5
    raise ValueError(f"no initialisation rule for {name} {shape}")


def random_state(config: dict) -> dict:
    """Seeded weights, one generator per tensor (independent of order and library version)."""
    import torch

    state = {}
    for name, shape in sorted(tensor_names(config).items()):
        if name.endswith("layer_norm.weight"):
            state[name] = torch.ones(shape)
            continue
        seed = int.from_bytes(hashlib.sha256(f"{SEED}:{name}".encode()).digest()[:8], "little")
        gen = torch.Generator().manual_seed(seed)
        state[name] = torch.randn(shape, generator=gen) * init_std(name, shape, config)
    return state


def tokenizer_files(spiece: bytes, tmp: Path) -> dict[str, bytes]:
    """spiece.model, tokenizer.json (converted from the slow tokenizer) and the JSON configs."""
    (tmp / "spiece.model").write_bytes(spiece)
    tok_config = {
        **SPECIAL, "extra_ids": N_EXTRA_IDS, "additional_special_tokens": EXTRA_IDS,
        "model_max_length": 512, "tokenizer_class": "T5Tokenizer",
        "clean_up_tokenization_spaces": False, "legacy": True,
    }
    special_map = {**SPECIAL, "additional_special_tokens": EXTRA_IDS}
    return {
        "spiece.model": spiece,
        "tokenizer.json": fast_tokenizer_json(tmp / "spiece.model"),
        "tokenizer_config.json": dump_json(tok_config),
        "special_tokens_map.json": dump_json(special_map),
    }


def fast_tokenizer_json(spiece_path: Path) -> bytes:
    """transformers' T5 slow-to-fast conversion of the vocabulary, as canonical JSON."""
    from transformers import T5Tokenizer
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    slow = T5Tokenizer(vocab_file=str(spiece_path), extra_ids=N_EXTRA_IDS, legacy=True)
    tok = json.loads(convert_slow_tokenizer(slow).to_str())
    # sentencepiece adds a dummy prefix ("always", as 4.44 and the hub's t5-small say);
    # transformers 5 writes "never" for a slow tokenizer made without add_prefix_space
    for part in (tok["pre_tokenizer"], tok["decoder"]):
        for step in part.get("pretokenizers", part.get("decoders", [part])):
            if step.get("type") == "Metaspace":
                step["prepend_scheme"] = "always"
    return dump_json(tok)


def dump_json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def build_files() -> dict[str, bytes]:
    """Every file of the snapshot, by name."""
    from safetensors.torch import save

    with tempfile.TemporaryDirectory() as tmp:
        files = tokenizer_files(train_spiece(), Path(tmp))
    files["config.json"] = dump_json(CONFIG)
    files["model.safetensors"] = save(random_state(CONFIG), metadata={"format": "pt"})
    return files


def snapshot_name(files: dict[str, bytes]) -> str:
    """A 40-hex 'commit' that names the content (the hub uses git commit hashes)."""
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def write_cache(home: Path, files: dict[str, bytes]) -> Path:
    """Lay the files out as the hub's cache does: hub/models--t5-small/{refs/main, snapshots}."""
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    commit = snapshot_name(files)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    # transformers 4.x treats a hub cache without version.txt as pre-4.22 and warns (offline)
    # or tries to migrate it (online)
    (home / "hub" / "version.txt").write_text("1")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)  # no trailing newline, as the hub writes it
    return snap


def is_built(home: Path) -> bool:
    ref = home / "hub" / f"models--{REPO}" / "refs" / "main"
    return ref.is_file() and (ref.parent.parent / "snapshots" / ref.read_text()
                              / "model.safetensors").is_file()


def ensure(out: Path | None = None, force: bool = False) -> Path:
    """The HF_HOME folder holding the tiny T5, built unless already there."""
    home = (out or default_out()).expanduser().resolve()
    home.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time (pytest-xdist workers, parallel sessions); the others then find it
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(home) and not force:
            return home
        log(f"building a tiny t5-small into {home}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
        try:
            write_cache(tmp, build_files())
            if home.exists():
                shutil.rmtree(home)
            tmp.rename(home)  # readers never see a half-written folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="HF_HOME folder (default: $AUDIOCRAFT_EXT_CACHE/tiny-t5-<key>)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    print(ensure(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
