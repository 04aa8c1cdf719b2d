"""The configuration as Hydra composes it from conf/ and the registered schemas."""

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from audiocraft_ext import config as schemas

schemas.register_configs()


def _compose(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="export", overrides=list(overrides))


def test_defaults():
    cfg = _compose()
    assert OmegaConf.get_type(cfg.input) is schemas.DemoInput
    assert cfg.state.select == schemas.StateChoice.auto
    assert OmegaConf.get_type(cfg.compression) is schemas.AutoCompression
    assert cfg.output.dir is None and cfg.output.overwrite is False
    assert cfg.validate.level == schemas.ValidateLevel.full and cfg.validate.duration == 1.0


@pytest.mark.parametrize("overrides, group, schema", [
    (["input=checkpoint", "input.path=x.th"], "input", schemas.CheckpointInput),
    (["input=xp", "input.dora_dir=d", "input.sig=abc", "input.epoch=3"], "input", schemas.XPInput),
    (["compression=pretrained", "compression.name=facebook/encodec_32khz"], "compression",
     schemas.PretrainedCompression),
    (["compression=checkpoint", "compression.path=//sig/abc"], "compression",
     schemas.CheckpointCompression),
    (["compression=none"], "compression", schemas.NoCompression),
])
def test_every_option_composes_onto_its_schema(overrides, group, schema):
    cfg = _compose(*overrides)
    assert OmegaConf.get_type(cfg[group]) is schema
    obj = OmegaConf.to_object(cfg[group])
    assert isinstance(obj, schema)


@pytest.mark.parametrize("option", ["auto", "fsdp_best", "best", "last"])
def test_state_options(option):
    assert _compose(f"state={option}").state.select == schemas.StateChoice(option)


@pytest.mark.parametrize("option", ["full", "load", "none"])
def test_validate_options(option):
    assert _compose(f"validate={option}").validate.level == schemas.ValidateLevel(option)


@pytest.mark.parametrize("override, message", [
    ("input.sigg=abc", "Key 'sigg' not in 'DemoInput'"),
    ("output.overwrit=true", "Key 'overwrit' not in 'OutputConfig'"),
    ("validate.duration=long", "could not be converted to Float"),
    ("state.select=newest", "Invalid value 'newest'"),
    ("state=newest", "Could not find 'state/newest'"),
])
def test_typos_and_wrong_types_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    assert message in str(info.value) + str(info.value.__cause__)
