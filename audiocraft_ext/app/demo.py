"""Write tiny but real AudioCraft training XPs, laid out and saved as the solvers save them.

The models are built by audiocraft's own builders from configs composed by ``hydra.compose``
(as Dora composes XP configs), take one real optimizer step on random data, and are saved
with ``audiocraft.utils.checkpoint.save_checkpoint`` in the solver's key layout. Nothing is
downloaded. Used by ``input=demo`` and by the test suite.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

DEMO_CONF = Path(__file__).parent / "demo_conf"


@contextmanager
def _outside_running_hydra() -> Iterator[None]:
    """Let hydra.compose run inside a Hydra app: set the app's GlobalHydra aside meanwhile."""
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def compose_xp_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``demo_conf/<name>.yaml`` with ``overrides`` through hydra.compose."""
    from hydra import compose, initialize_config_dir

    with _outside_running_hydra(), initialize_config_dir(str(DEMO_CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def xp_signature(cfg: DictConfig) -> str:
    """An 8-hex-digit signature derived from the config, in the style of Dora's."""
    return hashlib.sha1(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:8]


def _best_state(model: torch.nn.Module, cfg: DictConfig) -> dict:
    # BaseSolver keeps the best state in fsdp.param_dtype or autocast_dtype, else as is.
    dtype = (getattr(torch, cfg.fsdp.param_dtype) if cfg.fsdp.use
             else getattr(torch, cfg.autocast_dtype) if cfg.autocast else None)
    return {k: v.detach().clone().to(dtype) if dtype is not None and v.is_floating_point()
            else v.detach().clone() for k, v in model.state_dict().items()}


def _save_xp(dora_dir: Path, cfg: DictConfig, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, history: list, ema: bool,
             extra: dict | None = None) -> Path:
    from audiocraft.utils.checkpoint import save_checkpoint

    sig = xp_signature(cfg)
    best = _best_state(model, cfg)
    state = {
        "history": history,
        "xp.cfg": cfg,
        "xp.sig": sig,
        "best_state": {"model": best},
        "fsdp_best_state": {},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": None,
        # with EMA on, best_state is copied inside swap_ema_state(): it equals the EMA weights
        "ema": {"state": {"model": copy.deepcopy(best)}, "count": 1.0} if ema else None,
        **(extra or {}),
    }
    path = dora_dir / "xps" / sig / "checkpoint.th"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


def write_encodec_xp(dora_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Train a tiny EnCodec for one step; return its ``checkpoint.th``."""
    from audiocraft.models import builders

    cfg = compose_xp_config("encodec", overrides)
    torch.manual_seed(cfg.seed)
    model = builders.get_compression_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    model.train()  # the first forward in train mode initialises the RVQ codebooks (k-means)
    wav = torch.randn(cfg.dataset.batch_size, cfg.channels,
                      int(cfg.dataset.segment_duration * cfg.sample_rate))
    out = model(wav)
    loss = torch.nn.functional.l1_loss(out.x, wav) + out.penalty
    loss.backward()
    optimizer.step()
    model.eval()
    history = [{"train": {"l1": loss.item()}, "valid": {"l1": loss.item()}}]
    return _save_xp(Path(dora_dir), cfg, model, optimizer, history, ema=False,
                    extra={"adv_losses": {}})


def write_musicgen_xp(dora_dir: str | Path, compression_model_checkpoint: str,
                      overrides: Sequence[str] = ()) -> Path:
    """Train a tiny text-conditioned MusicGen LM for one step; return its ``checkpoint.th``."""
    from audiocraft.models import builders
    from audiocraft.modules.conditioners import ConditioningAttributes

    cfg = compose_xp_config(
        "musicgen", [f"compression_model_checkpoint={compression_model_checkpoint}", *overrides])
    torch.manual_seed(cfg.seed)
    model = builders.get_lm_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    model.train()
    tf = cfg.transformer_lm
    codes = torch.randint(0, tf.card, (cfg.dataset.batch_size, tf.n_q, 20))
    conditions = [ConditioningAttributes(text={"description": "demo"})
                  for _ in range(cfg.dataset.batch_size)]
    out = model.compute_predictions(codes, conditions)
    logits = out.logits[out.mask]
    loss = torch.nn.functional.cross_entropy(logits, codes[out.mask])
    loss.backward()
    optimizer.step()
    model.eval()
    history = [{"train": {"ce": loss.item()}, "valid": {"ce": loss.item()}}]
    return _save_xp(Path(dora_dir), cfg, model, optimizer, history, ema=cfg.optim.ema.use)


def write_demo_xps(dora_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Write an EnCodec XP and a MusicGen XP trained against it (``//sig/``); return the LM's
    checkpoint."""
    encodec = write_encodec_xp(dora_dir)
    return write_musicgen_xp(dora_dir, f"//sig/{encodec.parent.name}", overrides)
