"""The one flags layer (duca_common.cache.flags): reference commands give the presets' configs, both flag
spellings work, presets are overridden only by explicit flags, and every family lists the registry's methods."""

from __future__ import annotations

import argparse

import pytest
from duca_common.cache import get_preset
from duca_common.cache.flags import (
    add_cache_flags,
    config_from_flags,
    method_choices,
    resolve_cache_flags,
)
from duca_common.errors import UsageError
from duca_scripts.methods import token_config


def parse(family: str, argv: list[str], **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cache_flags(parser, family, **defaults)
    return parser.parse_args(argv)


DIT_README = ["--cache-type", "attention", "--fresh-threshold", "3", "--fresh-ratio", "0.05", "--ratio-scheduler",
              "ToCa", "--force-fresh", "global", "--soft-fresh-weight", "0.25"]
PIXART_SCRIPT = ["--fresh_threshold", "3", "--fresh_ratio", "0.30", "--cache_type", "attention", "--force_fresh",
                 "global", "--soft_fresh_weight", "0.25", "--ratio_scheduler", "ToCa"]


def test_reference_commands_give_the_preset_configs():
    assert config_from_flags(parse("dit", DIT_README), "dit") == get_preset("dit-duca-readme").config
    assert config_from_flags(parse("pixart", PIXART_SCRIPT), "pixart") == get_preset("pixart-duca-r70-script").config
    # the PixArt reference defaults are the script's: no flag at all gives the same config
    assert config_from_flags(parse("pixart", []), "pixart") == get_preset("pixart-duca-r70-script").config
    assert config_from_flags(parse("opensora", []), "opensora") == get_preset("opensora-duca").config


def test_both_spellings_and_interval_alias():
    dashed = parse("pixart", [s.replace("_", "-") if s.startswith("--") else s for s in PIXART_SCRIPT])
    assert config_from_flags(dashed, "pixart") == config_from_flags(parse("pixart", PIXART_SCRIPT), "pixart")
    assert config_from_flags(parse("dit", ["--cache", "fora", "--interval", "5"]), "dit").interval == 5


def test_preset_then_explicit_flags():
    cfg = config_from_flags(parse("pixart", ["--preset", "pixart-toca-r70", "--cache_type", "kv-norm"]), "pixart")
    assert cfg == get_preset("pixart-toca-r70").config.replace(selector="value_norm")
    # a script default never overrides a preset field (only flags given on the command line do)
    args = parse("dit", ["--preset", "dit-duca-n3-r95"], cache_type="attention")
    assert config_from_flags(args, "dit") == get_preset("dit-duca-n3-r95").config
    with pytest.raises(UsageError, match="contradicts"):
        config_from_flags(parse("dit", ["--preset", "dit-fora-n3", "--cache", "duca"]), "dit")
    with pytest.raises(UsageError, match="pixart preset, not DiT"):
        config_from_flags(parse("dit", ["--preset", "pixart-duca-r25"]), "dit")


def test_every_family_offers_every_registered_method():
    assert "taylorseer" in method_choices()
    for fam in ("dit", "pixart", "opensora"):
        for method in method_choices():
            choice = resolve_cache_flags(parse(fam, ["--cache", method]), fam)
            assert choice.config.method == method and method in choice.description
    ts = config_from_flags(parse("pixart", ["--cache", "taylorseer", "--fresh_threshold", "4", "--taylor_order", "2"]),
                           "pixart")
    assert (ts.method, ts.interval, ts.taylor_order) == ("taylorseer", 4, 2)


@pytest.mark.parametrize("argv,message", [
    (["--fresh-ratio", "nan"], "--fresh-ratio nan is invalid"),
    (["--fresh-ratio", "1.5"], "--fresh-ratio 1.5 is invalid"),
    (["--fresh-threshold", "0"], "--fresh-threshold 0 is invalid"),
    (["--soft-fresh-weight", "inf"], "--soft-fresh-weight inf is invalid"),
    (["--preset", "nope"], "unknown cache preset"),
])
def test_bad_values_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        config_from_flags(parse("dit", argv), "dit")


def test_scripts_build_token_configs_with_the_same_rules():
    assert token_config("duca", 3, 0.95, "value_norm") == get_preset("dit-duca-n3-r95").config
    assert token_config("toca", 3, 0.93, "attention_received") == get_preset("dit-toca-n3-r93").config
