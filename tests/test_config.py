"""The configuration as Hydra composes it from conf/ and the registered schemas."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from audiocraft_ext import config as schemas
from audiocraft_ext.app.guidance import explain, group_options
from tests.support.helpers import ROOT


def test_defaults(compose_config):
    cfg = compose_config()
    assert OmegaConf.get_type(cfg.input) is schemas.DemoInput
    assert cfg.state.select == schemas.StateChoice.auto
    assert OmegaConf.get_type(cfg.compression) is schemas.AutoCompression
    assert cfg.output.dir is None and cfg.output.overwrite is False
    assert cfg.validate.level == schemas.ValidateLevel.full and cfg.validate.duration == 1.0


@pytest.mark.parametrize("overrides, group, schema", [
    (["input=checkpoint", "input.path=x.th"], "input", schemas.CheckpointInput),
    (["input=xp", "input.dora_dir=d", "input.sig=abc", "input.epoch=3"], "input", schemas.XPInput),
    (["input=weights", "input.path=lm.pt", "input.base=release"], "input", schemas.WeightsInput),
    (["compression=pretrained", "compression.name=facebook/encodec_32khz"], "compression",
     schemas.PretrainedCompression),
    (["compression=checkpoint", "compression.path=//sig/abc"], "compression",
     schemas.CheckpointCompression),
    (["compression=none"], "compression", schemas.NoCompression),
])
def test_every_option_composes_onto_its_schema(compose_config, overrides, group, schema):
    cfg = compose_config(*overrides)
    assert OmegaConf.get_type(cfg[group]) is schema
    obj = OmegaConf.to_object(cfg[group])
    assert isinstance(obj, schema)


@pytest.mark.parametrize("option", ["auto", "fsdp_best", "best", "last", "ema", "average"])
def test_state_options(compose_config, option):
    assert compose_config(f"state={option}").state.select == schemas.StateChoice(option)


@pytest.mark.parametrize("option", ["full", "load", "none"])
def test_validate_options(compose_config, option):
    assert compose_config(f"validate={option}").validate.level == schemas.ValidateLevel(option)


@pytest.mark.parametrize("override, message", [
    ("input.sigg=abc", "Key 'sigg' not in 'DemoInput'"),
    ("output.overwrit=true", "Key 'overwrit' not in 'OutputConfig'"),
    ("validate.duration=long", "could not be converted to Float"),
    ("state.select=newest", "Invalid value 'newest'"),
    ("state=newest", "Could not find 'state/newest'"),
    ("list.sortt=ce", "Key 'sortt' not in 'ListConfig'"),
    ("mode=lst", "Invalid value 'lst'"),
])
def test_typos_and_wrong_types_fail_at_composition(compose_config, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override)
    assert message in str(info.value) + str(info.value.__cause__)


def test_list_mode_composes_onto_its_schema(compose_config):
    cfg = compose_config("mode=list", "input=xp", "list.sort=ce", "list.json=true",
                         "list.releases=rel")
    assert cfg.mode == schemas.Mode.list
    assert OmegaConf.get_type(cfg.list) is schemas.ListConfig
    assert OmegaConf.to_object(cfg.list) == schemas.ListConfig(sort="ce", json=True,
                                                               releases="rel")
    assert compose_config().list == schemas.ListConfig()  # defaults: by sig, a table


@pytest.mark.parametrize("override, explained", [
    ("input.sig=abc", "input.sig belongs to input=xp (not input=demo): add input=xp"),
    ("input.path=x", "input.path belongs to input=checkpoint or input=weights or input=xp (not "
                     "input=demo): add input=checkpoint or input=weights or input=xp"),
    ("input.base=x", "input.base belongs to input=weights (not input=demo): add input=weights"),
    ("compression.path=x", "compression.path belongs to compression=checkpoint (not "
                           "compression=auto): add compression=checkpoint"),
    ("input.sgi=abc", "no key input.sgi in input=demo; did you mean input.sig (with input=xp)?"),
    ("state.last_kk=2", "no key state.last_kk in state; did you mean state.last_k?"),
    ("input.zzz=1", "no key input.zzz in input=demo; its keys: input.trust, input.dora_dir"),
    ("outptu.dir=x", "no key outptu; did you mean output?"),
    ("inspect.jsn=true", "no key inspect.jsn; did you mean inspect.json?"),
    ("state=bets", "no option state=bets (options: auto, average, best, ema, fsdp_best, last); "
                   "did you mean state=best?"),
    ("state.select=newest", "Error merging override state.select=newest; Invalid value 'newest', "
                            "expected one of [auto, fsdp_best, best, last, ema, average]"),
])
def test_composition_mistakes_are_explained(compose_config, override, explained):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override)
    assert explain(info.value, ROOT / "conf") == explained


def test_the_groups_options_and_their_schemas():
    assert group_options(ROOT / "conf" / "input") == {
        "checkpoint": schemas.CheckpointInput, "demo": schemas.DemoInput, "xp": schemas.XPInput,
        "weights": schemas.WeightsInput}
    assert set(group_options(ROOT / "conf" / "state").values()) == {schemas.StateConfig}


def test_option_names_in_messages_come_from_the_schema():
    """Every field of every option is named as the command line and as export_release write
    it, with no table of names to keep in step; a key the schema lacks is an error."""
    from dataclasses import fields

    from audiocraft_ext.config import OPTIONS
    from audiocraft_ext.errors import command_line_messages, setting

    for group, options in OPTIONS.items():
        for schema in options.values():
            for f in fields(schema):
                key = f"{group}.{f.name}"
                with command_line_messages():
                    assert setting(key, 1).endswith(f"{key}=1")
                library = setting(key, 1)
                assert library in (f"{f.name}=1", "out_dir=1") or library.startswith(
                    f"{group}={schema.__name__}({f.name}=1)"), library
    with command_line_messages():
        assert setting("compression.name", "x") == "compression=pretrained compression.name=x"
        assert setting("compression=none") == "compression=none"
    assert setting("compression=none") == "compression=NoCompression()"
    assert setting("output.overwrite", True) == "overwrite=True"
    with pytest.raises(KeyError):
        setting("output.overwite")
