"""One flags layer: the cache flags of every CLI, and the CacheConfig they describe for a model family.

    parser = argparse.ArgumentParser()
    add_cache_flags(parser, "pixart")                  # or "dit" / "opensora"
    args = parser.parse_args()
    cfg = config_from_flags(args, "pixart")            # a validated CacheConfig (UsageError otherwise)

Flags (each accepted with dashes and with underscores, so the reference commands of the DiT fork
(``--fresh-ratio``) and of the PixArt fork (``--fresh_ratio``) both work unchanged):

* ours: ``--cache {methods}`` (from the method registry), ``--preset NAME`` (a paper row of this
  family, ``duca_common.cache.presets``), ``--taylor-order O``, ``--interval N`` (= ``--fresh-threshold``);
* the reference's: ``--fresh-threshold N``, ``--fresh-ratio r``, ``--cache-type {attention,kv-norm,random,...}``,
  ``--ratio-scheduler {ToCa,constant}``, ``--force-fresh global``, ``--soft-fresh-weight w``.

Meaning (the same for every family): without ``--cache`` and ``--preset`` the flags describe DuCa, as
the reference code always caches; ``--preset`` starts from the preset's config; ``--cache`` picks the
method (it must agree with a preset's method); every flag given explicitly then overrides its field.
Which flags apply is the method's to say (``duca_common.cache.methods``): token-wise methods (ToCa, DuCa,
dualca) take the fresh ratio, the selector, the ratio schedule and the staleness weight, with the family's
reference rules (:func:`reference_token_config`): its 'ToCa' ratio schedule, interval rule, selector mapping
and spatial bonus; methods with an expansion order (TaylorSeer, FoCa, HiCache, dualca) take ``--taylor-order``,
defaulting to the method's own order. OpenSora's token methods use its fixed module cycles (the
``opensora-duca`` preset) with ``--fresh-ratio`` applied. :func:`method_config` builds the same configs
from keyword settings (the benchmark and table scripts' method strings).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..validate import (
    FRACTION,
    INTERVAL,
    NON_NEGATIVE,
    TAYLOR_ORDER,
    Bound,
    check_number,
)
from .config import (
    DIT_TOCA_SCHEDULE,
    PIXART_TOCA_SCHEDULE,
    SELECTORS,
    CacheConfig,
    RatioSchedule,
)

# The reference spatial bonuses and staleness weight are the presets' (models.md A.7, B.9): one definition.
from .methods import available_methods, get_method
from .presets import DIT_SPATIAL, PIXART_SPATIAL, REFERENCE_STALENESS

FAMILIES = ("dit", "pixart", "opensora")
DEFAULTS_ATTR = "_cache_flag_defaults"  # where add_cache_flags leaves the script's defaults in the namespace


def method_choices() -> tuple[str, ...]:
    """The engine's methods, from the registry (methods registered from outside included)."""
    return available_methods()


@dataclass(frozen=True)
class Family:
    name: str
    label: str  # how messages name the family
    separator: str  # how the family's own CLIs spell flags: "-" or "_"
    cache_types: dict[str, str]  # reference --cache-type -> engine selector
    toca_schedule: RatioSchedule
    interval_rule: str
    spatial: dict[str, Any]
    defaults: dict[str, Any]  # the reference script's defaults
    reference_flags: bool = True  # OpenSora's fork has no reference cache flags

    def flag(self, dest: str) -> str:
        return "--" + dest.replace("_", self.separator)


# Expansion orders default to the method's (methods/*.py: TaylorSeer's published DiT rows use O=3); only
# OpenSora's CLI fixes its own, O=1, as it always has.
_FAMILIES = {
    # DiT reference argparse defaults (models.md A.7); sample.py overrides cache_type to 'attention'.
    "dit": Family(
        "dit",
        "DiT",
        "-",
        {"attention": "attention_received", "kv-norm": "value_norm", "random": "random", "similarity": "similarity"},
        DIT_TOCA_SCHEDULE,
        "dit",
        DIT_SPATIAL,
        {
            "fresh_threshold": 4,
            "fresh_ratio": 0.07,
            "cache_type": "random",
            "ratio_scheduler": "ToCa",
            "soft_fresh_weight": REFERENCE_STALENESS,
        },
    ),
    # PixArt reference scripts' defaults (models.md B.9): the attention cache type is cross-attention entropy.
    "pixart": Family(
        "pixart",
        "PixArt",
        "_",
        {"attention": "cross_entropy", "kv-norm": "value_norm", "random": "random"},
        PIXART_TOCA_SCHEDULE,
        "fixed",
        PIXART_SPATIAL,
        {
            "fresh_threshold": 3,
            "fresh_ratio": 0.30,
            "cache_type": "attention",
            "ratio_scheduler": "ToCa",
            "soft_fresh_weight": REFERENCE_STALENESS,
        },
    ),
    "opensora": Family(
        "opensora",
        "OpenSora",
        "-",
        {},
        RatioSchedule("constant"),
        "module_cycles",
        {},
        {"fresh_threshold": 3, "fresh_ratio": None, "taylor_order": 1},
        reference_flags=False,
    ),
}
RATIO_SCHEDULERS = ("ToCa", "constant")
FORCE_FRESH = ("global",)  # the only reference mode implemented (full refresh every N steps)


def family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; one of {', '.join(FAMILIES)}")
    return _FAMILIES[name]


def _order_defaults() -> str:
    orders = ((name, get_method(name).default_order) for name in method_choices())
    return ", ".join(f"{name} {order}" for name, order in orders if order is not None)


def _spellings(dest: str) -> list[str]:
    dash, under = "--" + dest.replace("_", "-"), "--" + dest
    return [dash] if dash == under else [dash, under]


def add_cache_flags(parser: argparse.ArgumentParser, family_name: str, **defaults: Any) -> argparse._ArgumentGroup:
    """Add the cache flags to ``parser``. ``defaults`` override the family's reference defaults for this
    script (e.g. DiT ``sample.py``: ``cache_type="attention"``); they apply only when a flag is not given,
    so a preset's fields are never overridden by a default."""
    fam = family(family_name)
    unknown = set(defaults) - set(fam.defaults) - {"method", "taylor_order"}
    if unknown:
        raise ValueError(f"add_cache_flags: no flag for {sorted(unknown)}")
    merged = {**fam.defaults, **defaults}
    from .presets import presets_for

    presets = ", ".join(p.name for p in presets_for(fam.name))
    g = parser.add_argument_group("caching (reference flags; without --cache/--preset they describe DuCa)")
    g.add_argument(
        "--cache",
        choices=method_choices(),
        default=None,
        help=f"caching method (default: {merged.get('method', 'duca')} configured by the flags below)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help=f"named operating point (a paper row): {presets}; explicit flags override its fields",
    )
    g.add_argument(
        *_spellings("fresh_threshold"),
        "--interval",
        dest="fresh_threshold",
        type=int,
        default=None,
        help=f"cycle length N (default {merged['fresh_threshold']})",
    )
    g.add_argument(
        *_spellings("fresh_ratio"),
        dest="fresh_ratio",
        type=float,
        default=None,
        help=f"base fraction of tokens recomputed, 1 - R (default {merged['fresh_ratio']})",
    )
    g.add_argument(
        *_spellings("taylor_order"),
        dest="taylor_order",
        type=int,
        default=None,
        help="expansion order O of the forecasting methods (default "
        + (str(merged["taylor_order"]) if "taylor_order" in merged else "the method's: " + _order_defaults())
        + ")",
    )
    if fam.reference_flags:
        g.add_argument(
            *_spellings("cache_type"),
            dest="cache_type",
            choices=sorted(fam.cache_types),
            default=None,
            help="token selector: "
            + ", ".join(f"{k} = {v}" for k, v in fam.cache_types.items())
            + f" (default {merged['cache_type']})",
        )
        g.add_argument(
            *_spellings("ratio_scheduler"),
            dest="ratio_scheduler",
            choices=RATIO_SCHEDULERS,
            default=None,
            help=f"fresh ratio per step and layer (default {merged['ratio_scheduler']})",
        )
        g.add_argument(
            *_spellings("force_fresh"),
            dest="force_fresh",
            choices=FORCE_FRESH,
            default=None,
            help="only 'global' (the reference setting: every block refreshed every N steps)",
        )
        g.add_argument(
            *_spellings("soft_fresh_weight"),
            dest="soft_fresh_weight",
            type=float,
            default=None,
            help=f"staleness bonus weight (default {merged['soft_fresh_weight']})",
        )
    parser.set_defaults(**{DEFAULTS_ATTR: merged})
    return g


def reference_token_config(
    family_name: str,
    method: str,
    interval: int,
    fresh_ratio: float,
    selector: str,
    scheduler: str = "ToCa",
    staleness: float = REFERENCE_STALENESS,
) -> CacheConfig:
    """ToCa / DuCa with a family's reference rules (the presets' construction, any N and ratio)."""
    fam = family(family_name)
    if fam.name == "opensora":
        raise ValueError("OpenSora token methods use module cycles: start from the 'opensora-duca' preset")
    schedule = fam.toca_schedule if scheduler == "ToCa" else RatioSchedule("constant")
    return CacheConfig(
        method=method,
        interval=interval,
        fresh_ratio=fresh_ratio,
        ratio_schedule=schedule,
        interval_rule=fam.interval_rule,
        selector=selector,
        staleness_weight=staleness,
        **fam.spatial,
    )


@dataclass(frozen=True)
class CacheChoice:
    config: CacheConfig
    source: str  # "preset NAME: paper row", "reference flags" or "--cache METHOD"
    description: str  # one line for logs


def _given(args: argparse.Namespace, dest: str) -> Any:
    return getattr(args, dest, None)


def resolve_cache_flags(args: argparse.Namespace, family_name: str) -> CacheChoice:
    """The config the flags describe, with where it came from; a bad combination is a ``UsageError``."""
    from .presets import get_preset, presets_for

    fam = family(family_name)
    defaults = {**fam.defaults, **(getattr(args, DEFAULTS_ATTR, None) or {})}
    flag = fam.flag
    bounds: dict[str, Bound] = {
        "fresh_threshold": INTERVAL,
        "fresh_ratio": FRACTION,
        "taylor_order": TAYLOR_ORDER,
        "soft_fresh_weight": NON_NEGATIVE,
    }
    for dest, bound in bounds.items():
        check_number(flag(dest), _given(args, dest), bound)
    method = _given(args, "cache")
    if method is not None and method not in method_choices():
        raise UsageError(f"--cache {method} is not a method; one of {', '.join(method_choices())}")

    if _given(args, "preset"):
        try:
            preset = get_preset(args.preset)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if preset.model != fam.name:
            raise UsageError(
                f"--preset {args.preset} is a {preset.model} preset, not {fam.label}; {fam.label} presets: "
                + ", ".join(p.name for p in presets_for(fam.name))
            )
        if method is not None and method != preset.config.method:
            raise UsageError(
                f"--cache {method} contradicts --preset {args.preset} (method {preset.config.method}); drop one of them"
            )
        base, source = preset.config, f"preset {preset.name}: {preset.paper_row}"
        method = base.method
    else:
        source = "reference flags" if method is None else f"--cache {method}"
        method = method or defaults.get("method", "duca")
        base = _method_base(fam, method, defaults, args)

    changes: dict[str, Any] = {}
    if base.caches:
        if _given(args, "fresh_threshold") is not None:
            changes["interval"] = args.fresh_threshold
        method_rules = get_method(base.method)
        if method_rules.default_order is not None and _given(args, "taylor_order") is not None:
            changes["taylor_order"] = args.taylor_order
        if method_rules.token_wise:
            if _given(args, "fresh_ratio") is not None:
                changes["fresh_ratio"] = args.fresh_ratio
            if fam.reference_flags:
                if _given(args, "cache_type") is not None:
                    changes["selector"] = fam.cache_types[args.cache_type]
                if _given(args, "soft_fresh_weight") is not None:
                    changes["staleness_weight"] = args.soft_fresh_weight
                if _given(args, "ratio_scheduler") is not None:
                    changes["ratio_schedule"] = (
                        fam.toca_schedule if args.ratio_scheduler == "ToCa" else RatioSchedule("constant")
                    )
    try:
        config = base.replace(**changes) if changes else base
    except ValueError as exc:
        raise UsageError(f"invalid cache flags: {exc}") from None
    return CacheChoice(config, source, describe(config, source))


def _method_base(fam: Family, method: str, defaults: dict[str, Any], args: argparse.Namespace) -> CacheConfig:
    """The config of ``method`` at the family's reference defaults (flags are applied afterwards)."""
    token = {}
    if fam.reference_flags:
        token = {
            "fresh_ratio": defaults["fresh_ratio"],
            "selector": fam.cache_types[defaults["cache_type"]],
            "scheduler": defaults["ratio_scheduler"],
            "staleness": defaults["soft_fresh_weight"],
        }
    try:
        return method_config(
            fam.name, method, interval=defaults["fresh_threshold"], taylor_order=defaults.get("taylor_order"), **token
        )
    except ValueError as exc:
        raise UsageError(f"invalid cache flags: {exc}") from None


def method_config(
    family_name: str,
    method: str,
    *,
    interval: int,
    fresh_ratio: float | None = None,
    selector: str | None = None,
    taylor_order: int | None = None,
    scheduler: str = "ToCa",
    staleness: float = REFERENCE_STALENESS,
) -> CacheConfig:
    """``method`` for a model family from its settings, whichever the method takes: token-wise methods get the
    family's reference rules (:func:`reference_token_config`; OpenSora's module cycles), fresh ratio and
    selector defaulting to the method's paper rows; methods with an expansion order get ``taylor_order`` or
    their own default. A bad value raises ``ValueError``."""
    rules = get_method(method)
    if not rules.caches:
        return CacheConfig(method=method)
    if not rules.token_wise:
        config = CacheConfig(method=method, interval=interval)
    elif family_name == "opensora":
        from .presets import get_preset

        reference = get_preset("opensora-duca").config
        if rules.module_cycles:  # the reference fork's per-module F/T/A cycles
            config = reference.replace(method=method, interval=interval)
        else:  # a token-wise method without module cycles: a fixed interval, the reference's selector
            config = CacheConfig(method=method, interval=interval, fresh_ratio=reference.fresh_ratio)
        if fresh_ratio is not None:
            config = config.replace(fresh_ratio=fresh_ratio)
    else:
        paper = rules.paper_defaults
        config = reference_token_config(
            family_name,
            method,
            interval,
            float(paper["fresh_ratio"]) if fresh_ratio is None else fresh_ratio,
            str(paper["selector"]) if selector is None else selector,
            scheduler,
            staleness,
        )
    if rules.default_order is not None:
        config = config.replace(taylor_order=rules.default_order if taylor_order is None else taylor_order)
    return config


def settings_text(config: CacheConfig) -> str:
    """The settings a table shows for ``config``: ``N=3, R=95%, value_norm`` (token-wise), ``N=4, O=3``
    (with an expansion order), ``N=3``; ``-`` without caching."""
    if not config.caches:
        return "-"
    rules = get_method(config.method)
    parts = [f"N={config.interval}"]
    if rules.token_wise:
        parts += [f"R={1 - config.fresh_ratio:.0%}", config.selector]
    if rules.default_order is not None:
        parts.append(f"O={config.taylor_order}")
    return ", ".join(parts)


def describe(config: CacheConfig, source: str) -> str:
    """One line: method, its parameters and where the config came from."""
    if not config.caches:
        return f"no cache ({source})"
    parts = [f"N={config.interval}"]
    rules = get_method(config.method)
    if rules.token_wise:
        parts += [
            f"fresh_ratio={config.fresh_ratio:g}",
            f"selector={config.selector}",
            f"scheduler={'constant' if config.ratio_schedule.kind == 'constant' else 'ToCa'}",
        ]
    if rules.default_order is not None:
        parts.append(f"O={config.taylor_order}")
    return f"{config.method} ({source}): " + " ".join(parts)


def config_from_flags(args: argparse.Namespace, family_name: str) -> CacheConfig:
    """The validated :class:`CacheConfig` the parsed flags describe for ``family_name``."""
    return resolve_cache_flags(args, family_name).config


__all__ = [
    "FAMILIES",
    "SELECTORS",
    "CacheChoice",
    "Family",
    "add_cache_flags",
    "config_from_flags",
    "describe",
    "family",
    "method_choices",
    "method_config",
    "reference_token_config",
    "resolve_cache_flags",
    "settings_text",
]
