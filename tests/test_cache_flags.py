"""The one flags layer (duca_common.cache.flags): reference commands give the presets' configs, both flag
spellings work, presets are overridden only by explicit flags, and every family lists the registry's methods."""

from __future__ import annotations

import argparse

import pytest

from duca_common.cache import CacheConfig, get_preset
from duca_common.cache.flags import (
    add_cache_flags,
    config_from_flags,
    method_choices,
    method_config,
    resolve_cache_flags,
    settings_text,
)
from duca_common.errors import UsageError


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
    assert method_config("dit", "duca", interval=3) == get_preset("dit-duca-n3-r95").config
    assert method_config("dit", "toca", interval=3) == get_preset("dit-toca-n3-r93").config


def test_the_method_decides_which_flags_apply():
    """Token flags reach every token-wise method and --taylor-order every method with an expansion order,
    whatever its name: dualca takes both, FoCa / HiCache the order, FORA neither."""
    token = ["--fresh-threshold", "5", "--fresh-ratio", "0.1", "--cache-type", "kv-norm", "--taylor-order", "2"]
    dualca = config_from_flags(parse("dit", ["--cache", "dualca", *token]), "dit")
    assert (dualca.interval, dualca.fresh_ratio, dualca.selector, dualca.taylor_order) == (5, 0.1, "value_norm", 2)
    assert dualca == get_preset("dit-duca-n3-r95").config.replace(
        method="dualca", interval=5, fresh_ratio=0.1, taylor_order=2)
    for name in ("foca", "hicache", "taylorseer"):
        cfg = config_from_flags(parse("dit", ["--cache", name, "--taylor-order", "1", "--interval", "4"]), "dit")
        assert (cfg.method, cfg.interval, cfg.taylor_order) == (name, 4, 1)
    fora = config_from_flags(parse("pixart", ["--cache", "fora", "--fresh_ratio", "0.5", "--taylor_order", "2"]),
                             "pixart")
    assert fora == CacheConfig(method="fora", interval=3)        # the token and order flags are dropped


def test_orders_default_to_the_method_and_settings_text():
    """Without --taylor-order each method keeps its own order (TaylorSeer's published O=3, FoCa's preset
    O=2, dualca's O=1); OpenSora's CLI fixes O=1 for all. settings_text is what the tables print."""
    orders = {name: config_from_flags(parse("dit", ["--cache", name]), "dit").taylor_order
              for name in ("taylorseer", "foca", "hicache", "dualca")}
    assert orders == {"taylorseer": 3, "foca": 2, "hicache": 2, "dualca": 1}
    assert config_from_flags(parse("opensora", ["--cache", "taylorseer"]), "opensora").taylor_order == 1
    assert settings_text(get_preset("dit-duca-n3-r95").config) == "N=3, R=95%, value_norm"
    assert settings_text(get_preset("dit-taylorseer-n5-o3").config) == "N=5, O=3"
    assert settings_text(get_preset("dit-dualca-n5-r95").config) == "N=5, R=95%, value_norm, O=1"
    assert settings_text(method_config("dit", "none", interval=3)) == "-"
