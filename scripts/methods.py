"""Method specifications for the benchmark and the table: presets, method strings and the paper's grid.

A method is written one of three ways on the command line:

* a preset name from ``duca_common.cache.presets`` (``dit-duca-n3-r95``);
* an engine method with optional settings, ``METHOD[:key=value,...]``::

      none
      fora:n=3
      toca:n=3,r=0.93            # R is the cache ratio, fresh ratio = 1 - R
      duca:n=5,r=0.95,sel=value_norm
      taylorseer:n=4,o=3
      taylorseer:n=4,o=3,warmup=3  # the first 3 steps always full, then the cycle (any caching method)

  Which settings a method takes, and their defaults, are the method's (``duca_common.cache.methods``):
  token-wise methods (ToCa, DuCa, dualca) take ``r`` and ``sel`` and use the DiT reference rules (models.md
  A.7): the 'ToCa' ratio schedule, the DiT interval rule, the staleness and 2x2 spatial bonuses of the
  presets; forecasting methods (TaylorSeer, FoCa, HiCache, dualca) take ``o``;
* a peer baseline from cache-dit (``duca_scripts.peers``)::

      cachedit-dbcache:fn=1,bn=0,rdt=0.08,warmup=2
      cachedit-taylorseer:fn=1,bn=0,rdt=0.24,o=1
      cachedit-foca:rdt=0.16          # cache-dit's FoCa calibrator (BDF2 predictor + Heun corrector)
      cachedit-dmd:rdt=0.16           # cache-dit's DMD (exponential-basis) calibrator

* a peer baseline from diffusers' own cache hooks (``duca_scripts.diffusers_peers``), run on the diffusers
  copy of our DiT (``DiTTransformer2DModel``, same weights); each setting defaults to diffusers' own default::

      diffusers-fbcache:t=0.08        # FirstBlockCache: t = threshold on the first block's residual change
      diffusers-pab:skip=2,lo=100,hi=800   # Pyramid Attention Broadcast: attention computed every skip-th
                                           # evaluation while lo < timestep < hi (skip=1 never skips)
      diffusers-taylorseer:interval=4,o=1,warmup=3   # TaylorSeerCache on every block's attention and MLP:
                                           # computed every interval-th step after warmup steps, order o
      diffusers-magcache:t=0.06,k=3,r=0.2  # MagCache: t = accumulated-error threshold, k = most consecutive
                                           # skipped steps, r = retention ratio (first r x steps computed);
                                           # its magnitude ratios are calibrated on the model first
      diffusers-fastercache:uncond=5,skip=2  # FasterCache: the unconditional half computed every uncond-th
                                           # evaluation (else approximated from the conditional one), and
                                           # then attention every skip-th call; diffusers' timestep ranges

Every spec parses into a :class:`MethodSpec` before any model is built, so a typo fails in
milliseconds with the list of what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duca_common.cache import PRESETS, CacheConfig, get_method, get_preset
from duca_common.cache.config import SELECTORS
from duca_common.cache.flags import method_choices, method_config, settings_text

ENGINE_METHODS = method_choices()          # the engine's registry (duca_common.cache.flags.method_choices)
PEER_METHODS = ("cachedit-dbcache", "cachedit-taylorseer", "cachedit-foca", "cachedit-dmd")
DIFFUSERS_PEER_METHODS = ("diffusers-fbcache", "diffusers-pab", "diffusers-taylorseer", "diffusers-magcache",
                          "diffusers-fastercache")
# Family names of peers start with one of these (tables and plots tell peers from project methods by it).
PEER_FAMILY_PREFIXES = ("cachedit-", "diffusers-")

# Defaults of a method string come from the method (duca_common.cache.methods): token-wise methods take
# their paper rows' R and selector (ToCa R=93% by attention received, DuCa R=95% by value norm; paper.md
# section 2), forecasting methods their own order (TaylorSeer O=3 as its published rows). The cycle length
# N = 3 is the DuCa README's fresh_threshold (models.md A.7) and the presets' n3 rows.
DEFAULT_INTERVAL = 3
# Decimals kept of the fresh ratio 1 - R: drops float noise (1 - 0.95 = 0.050000000000000044) so the
# config equals the preset's 0.05.
FRESH_RATIO_DECIMALS = 6

# The paper's DiT grid: every method at N = 2..7 (the range of the DuCa/TaylorSeer ablations).
PAPER_GRID_INTERVALS = (2, 3, 4, 5, 6, 7)
PAPER_GRID_METHODS = ("fora", "toca", "duca", "taylorseer")


def allowed_keys(method: str) -> set[str]:
    """The settings a method string takes: N and the warm-up (first steps always full) always, R and the
    selector for token-wise methods, O for methods with an expansion order."""
    rules = get_method(method)
    if not rules.caches:
        return set()
    return ({"n", "warmup"} | ({"r", "sel"} if rules.token_wise else set())
            | ({"o"} if rules.default_order is not None else set()))


class MethodSpecError(ValueError):
    """A method string that cannot be parsed; the message lists what is allowed."""


@dataclass(frozen=True)
class PeerSettings:
    """cache-dit settings (DBCache: Fn compute blocks, Bn compute blocks at the end, residual diff threshold).

    Defaults: cache-dit 1.5.3's ``DBCacheConfig`` / ``TaylorSeerCalibratorConfig`` defaults (bn 0, rdt 0.08,
    max_cached -1, order 1), except ``fn`` and ``warmup`` (cache-dit: 8 and 8), which are this project's
    F1B0 setting with 2 warm-up steps (docs/benchmarks.md method strings)."""

    kind: str                       # "dbcache", or the calibrator: "taylorseer", "foca", "dmd"
    fn: int = 1                     # Fn_compute_blocks
    bn: int = 0                     # Bn_compute_blocks
    rdt: float = 0.08               # residual_diff_threshold
    warmup: int = 2                 # max_warmup_steps: always-computed first steps
    order: int = 1                  # TaylorSeer calibrator order
    max_cached: int = -1            # max_cached_steps (-1: unlimited)


# Per cache-dit peer: method-string key -> (PeerSettings field, type).
PEER_KEYS: dict[str, tuple[str, type]] = {"fn": ("fn", int), "bn": ("bn", int), "rdt": ("rdt", float),
                                          "warmup": ("warmup", int), "o": ("order", int), "max": ("max_cached", int)}


# diffusers 0.42.1's defaults (FirstBlockCacheConfig.threshold; PyramidAttentionBroadcastConfig's spatial
# timestep range, and the skip range of 2 it falls back to; TaylorSeerCacheConfig.cache_interval /
# max_order / disable_cache_before_step; MagCacheConfig.threshold / max_skip_steps / retention_ratio;
# FasterCacheConfig.unconditional_batch_skip_range and spatial_attention_block_skip_range);
# tests/test_scripts_diffusers_peers.py checks them against the installed diffusers.
DIFFUSERS_FBC_THRESHOLD = 0.05
DIFFUSERS_PAB_SKIP = 2
DIFFUSERS_PAB_TIMESTEPS = (100, 800)
DIFFUSERS_TAYLORSEER_INTERVAL = 5
DIFFUSERS_TAYLORSEER_ORDER = 1
DIFFUSERS_TAYLORSEER_WARMUP = 3
DIFFUSERS_MAGCACHE_THRESHOLD = 0.06
DIFFUSERS_MAGCACHE_MAX_SKIP = 3
DIFFUSERS_MAGCACHE_RETENTION = 0.2
DIFFUSERS_FASTERCACHE_UNCOND = 5
DIFFUSERS_FASTERCACHE_SKIP = 2
DIFFUSERS_DEFAULT_THRESHOLD = {"fbcache": DIFFUSERS_FBC_THRESHOLD, "magcache": DIFFUSERS_MAGCACHE_THRESHOLD}


@dataclass(frozen=True)
class DiffusersPeerSettings:
    """Settings of one diffusers cache hook (``kind``: fbcache, pab, taylorseer, magcache, fastercache); each reads
    only its own fields (:data:`DIFFUSERS_KEYS`)."""

    kind: str
    threshold: float | None = None                  # fbcache / magcache threshold (None: that hook's default)
    skip: int = DIFFUSERS_PAB_SKIP                  # pab, fastercache: spatial_attention_block_skip_range
    lo: int = DIFFUSERS_PAB_TIMESTEPS[0]            # pab: spatial_attention_timestep_skip_range
    hi: int = DIFFUSERS_PAB_TIMESTEPS[1]
    interval: int = DIFFUSERS_TAYLORSEER_INTERVAL   # taylorseer: cache_interval
    order: int = DIFFUSERS_TAYLORSEER_ORDER         # taylorseer: max_order
    warmup: int = DIFFUSERS_TAYLORSEER_WARMUP       # taylorseer: disable_cache_before_step
    max_skip: int = DIFFUSERS_MAGCACHE_MAX_SKIP     # magcache: max_skip_steps
    retention: float = DIFFUSERS_MAGCACHE_RETENTION  # magcache: retention_ratio
    uncond: int = DIFFUSERS_FASTERCACHE_UNCOND      # fastercache: unconditional_batch_skip_range

    def __post_init__(self) -> None:
        if self.threshold is None and self.kind in DIFFUSERS_DEFAULT_THRESHOLD:
            object.__setattr__(self, "threshold", DIFFUSERS_DEFAULT_THRESHOLD[self.kind])

    def describe(self) -> str:
        """The settings that matter for this kind, for tables."""
        if self.kind == "pab":
            return f"skip={self.skip}, {self.lo} < t < {self.hi}"
        if self.kind == "taylorseer":
            return f"interval={self.interval}, O={self.order}, warm-up {self.warmup}"
        if self.kind == "magcache":
            return f"t={self.threshold:g}, K={self.max_skip}, retention {self.retention:g}"
        if self.kind == "fastercache":
            return f"uncond every {self.uncond}, attention skip={self.skip}"
        return f"t={self.threshold:g}"


# Per diffusers peer: method-string key -> (field, type, smallest allowed value, what it means).
DIFFUSERS_KEYS: dict[str, dict[str, tuple[str, type, float, str]]] = {
    "diffusers-fbcache": {"t": ("threshold", float, 0.0, "the relative residual change of the first block")},
    "diffusers-pab": {"skip": ("skip", int, 1, "attention computed every skip-th evaluation; 1 never skips"),
                      "lo": ("lo", int, -1, "lower end (exclusive) of the timesteps where attention may be reused"),
                      "hi": ("hi", int, 0, "upper end (exclusive) of the timesteps where attention may be reused")},
    "diffusers-taylorseer": {"interval": ("interval", int, 1, "steps between full computations; 1 never skips"),
                             "o": ("order", int, 1, "Taylor order"),
                             "warmup": ("warmup", int, 1, "first steps computed in full (at least one)")},
    "diffusers-magcache": {"t": ("threshold", float, 0.0, "the accumulated magnitude-ratio error"),
                           "k": ("max_skip", int, 0, "most consecutive skipped steps; 0 never skips"),
                           "r": ("retention", float, 0.0, "fraction of the first steps always computed, in [0, 1]")},
    "diffusers-fastercache": {"uncond": ("uncond", int, 1, "unconditional half computed every uncond-th evaluation; "
                                                          "1 never approximates it"),
                              "skip": ("skip", int, 1, "attention computed every skip-th call while the "
                                                       "unconditional half is approximated")},
}


@dataclass(frozen=True)
class MethodSpec:
    """One row of a benchmark or table: a label, the engine config (or peer settings) and a setting string."""

    label: str                      # the text the user gave (unique within a run)
    family: str                     # "none", "fora", "toca", "duca", "taylorseer", "cachedit-dbcache", ...
    setting: str                    # human-readable, e.g. "N=3, R=95%"
    config: CacheConfig = field(default_factory=CacheConfig)
    peer: PeerSettings | DiffusersPeerSettings | None = None
    paper_row: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.family == "none"

    @property
    def is_peer(self) -> bool:
        return self.peer is not None


def _parse_kv(label: str, body: str, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, body.split(",")):
        if "=" not in part:
            raise MethodSpecError(f"method {label!r}: setting {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in allowed:
            raise MethodSpecError(f"method {label!r}: unknown setting {key!r}; "
                                  f"allowed: {', '.join(sorted(allowed)) or 'none'}")
        out[key] = value
    return out


def _number(label: str, key: str, value: str, kind: type) -> float | int:
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise MethodSpecError(f"method {label!r}: {key}={value!r} is not {what}") from None


def _engine_spec(label: str, method: str, kv: dict[str, str]) -> MethodSpec:
    """An engine method at the DiT reference rules (the flags layer's :func:`method_config`)."""
    settings: dict = {"interval": int(_number(label, "n", kv["n"], int)) if "n" in kv else DEFAULT_INTERVAL}
    if "o" in kv:
        settings["taylor_order"] = int(_number(label, "o", kv["o"], int))
    if "r" in kv:
        r = float(_number(label, "r", kv["r"], float))
        if not 0.0 <= r <= 1.0:
            raise MethodSpecError(f"method {label!r}: r={r} is the cache ratio R and must be in [0, 1] "
                                  f"(R=0.95 means 95%)")
        settings["fresh_ratio"] = round(1.0 - r, FRESH_RATIO_DECIMALS)
    if "sel" in kv:
        if kv["sel"] not in SELECTORS:
            raise MethodSpecError(f"method {label!r}: sel={kv['sel']!r} is not one of {', '.join(SELECTORS)}")
        settings["selector"] = kv["sel"]
    warmup = int(_number(label, "warmup", kv["warmup"], int)) if "warmup" in kv else 0
    try:
        config = method_config("dit", method, **settings)
        if warmup:
            config = config.replace(warmup_full_steps=warmup)
    except ValueError as exc:
        raise MethodSpecError(f"method {label!r}: {exc}") from None
    setting = settings_text(config) + (f", warm-up {config.warmup_full_steps}" if config.warmup_full_steps else "")
    return MethodSpec(label, method, setting, config)


def _peer_spec(label: str, family: str, kv: dict[str, str]) -> MethodSpec:
    kind = family.split("-", 1)[1]
    # settings not given keep PeerSettings' defaults
    peer = PeerSettings(kind=kind, **{name: _number(label, key, kv[key], cast)
                                      for key, (name, cast) in PEER_KEYS.items() if key in kv})
    if peer.fn < 1 or peer.bn < 0 or peer.rdt < 0 or peer.warmup < 0 or peer.order < 1:
        raise MethodSpecError(f"method {label!r}: need fn >= 1, bn >= 0, rdt >= 0, warmup >= 0, o >= 1; got {peer}")
    setting = (f"F{peer.fn}B{peer.bn}, rdt={peer.rdt:g}" + (f", O={peer.order}" if kind == "taylorseer" else "")
               + (f", {kind.upper() if kind == 'dmd' else 'FoCa'} calibrator" if kind in ("foca", "dmd") else ""))
    return MethodSpec(label, family, setting, CacheConfig(method="none"), peer=peer)


def _diffusers_spec(label: str, family: str, kv: dict[str, str]) -> MethodSpec:
    keys = DIFFUSERS_KEYS[family]
    values: dict = {"kind": family.split("-", 1)[1]}
    for key, text in kv.items():
        name, kind, minimum, meaning = keys[key]
        value = _number(label, key, text, kind)
        if not value >= minimum:          # also refuses nan
            raise MethodSpecError(f"method {label!r}: {key}={text} must be >= {minimum:g} ({key}: {meaning})")
        values[name] = value
    peer = DiffusersPeerSettings(**values)
    if peer.kind == "pab" and not peer.lo < peer.hi:
        raise MethodSpecError(f"method {label!r}: lo={peer.lo} must be below hi={peer.hi} (attention is reused "
                              f"while lo < timestep < hi)")
    if peer.kind == "magcache" and peer.retention > 1:
        raise MethodSpecError(f"method {label!r}: r={peer.retention:g} is a fraction of the steps; use 0 <= r <= 1")
    return MethodSpec(label, family, peer.describe(), CacheConfig(method="none"), peer=peer)


def is_peer_family(family: str) -> bool:
    """True for a peer's family name (cache-dit or diffusers), False for the project's methods and 'none'."""
    return family.startswith(PEER_FAMILY_PREFIXES)


def parse_method(text: str) -> MethodSpec:
    """Parse one method string (preset name, ``method[:k=v,...]`` or a cache-dit peer)."""
    label = text.strip()
    if label in PRESETS:
        preset = get_preset(label)
        return MethodSpec(label, preset.config.method, settings_text(preset.config), preset.config,
                          paper_row=preset.paper_row)
    name, _, body = label.partition(":")
    if name in ENGINE_METHODS:
        return _engine_spec(label, name, _parse_kv(label, body, allowed_keys(name)))
    if name in PEER_METHODS:
        return _peer_spec(label, name, _parse_kv(label, body, set(PEER_KEYS)))
    if name in DIFFUSERS_PEER_METHODS:
        return _diffusers_spec(label, name, _parse_kv(label, body, set(DIFFUSERS_KEYS[name])))
    raise MethodSpecError(f"unknown method {label!r}: use a preset ({', '.join(sorted(PRESETS))}), "
                          f"an engine method ({', '.join(ENGINE_METHODS)}) with optional ':n=3,r=0.95,...', "
                          f"or a peer ({', '.join(PEER_METHODS + DIFFUSERS_PEER_METHODS)})")


def parse_methods(texts: list[str], *, model_family: str = "dit") -> list[MethodSpec]:
    """Parse a list, check labels are unique and presets fit the model; put the uncached baseline first
    (added when missing: every ratio is taken against the uncached run of the same invocation)."""
    specs = [parse_method(t) for t in texts]
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise MethodSpecError(f"methods listed twice: {', '.join(dupes)}")
    for s in specs:
        if s.label in PRESETS and PRESETS[s.label].model != model_family:
            raise MethodSpecError(f"preset {s.label!r} is for {PRESETS[s.label].model}, not {model_family}; "
                                  f"its presets: {', '.join(p for p, v in PRESETS.items() if v.model == model_family)}")
    baseline = [s for s in specs if s.is_baseline]
    if not baseline:
        baseline = [parse_method("none")]
    return baseline[:1] + [s for s in specs if not s.is_baseline] + baseline[1:]


def paper_grid(intervals: tuple[int, ...] = PAPER_GRID_INTERVALS,
               methods: tuple[str, ...] = PAPER_GRID_METHODS) -> list[str]:
    """The paper's DiT grid as method strings: each method at each N, token methods at the preset ratios."""
    out = ["none"]
    for method in methods:
        for n in intervals:
            out.append(f"{method}:n={n}")
    return out


# cache-dit settings spanning the FLOPs range of the engine grid: DBCache with one front compute
# block and a growing residual-diff threshold (cache-dit's documented knob); the TaylorSeer
# calibrator at the same thresholds. Thresholds are relative L1 changes of the first block's residual.
PEER_GRID_THRESHOLDS = (0.04, 0.08, 0.16, 0.32)


def peer_grid(thresholds: tuple[float, ...] = PEER_GRID_THRESHOLDS) -> list[str]:
    out = [f"cachedit-dbcache:fn=1,bn=0,rdt={t:g}" for t in thresholds]
    out += [f"cachedit-taylorseer:fn=1,bn=0,rdt={t:g},o=1" for t in thresholds]
    return out
