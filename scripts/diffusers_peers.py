"""Peer baselines from diffusers' own cache hooks, run on the diffusers copy of our DiT.

diffusers 0.42.1 ships its caching methods as hooks (``diffusers.hooks``) that its ``CacheMixin`` models enable
with ``enable_cache(config)``. ``DiTTransformer2DModel`` is not a ``CacheMixin``, but its blocks are diffusers'
``BasicTransformerBlock`` (in the hooks' ``TransformerBlockRegistry``) and its attention is diffusers'
``Attention``, so the hooks apply to it unchanged. Here the target's DiT is converted to a
``DiTTransformer2DModel`` with the same weights (``dit_duca.diffusers_format``: ``to_diffusers``,
``norm_eps=1e-6`` and :func:`match_official_dit`, so the forward is ours; the tests hold the uncached latents
to ours), wrapped in :class:`CachingDiT` (the diffusers class plus diffusers' ``CacheMixin``, what its
cache-capable models inherit), and sampled by *our* loop (``dit_duca.diffusion`` DDIM, the same CFG, noise
and labels as every other row) through :class:`DiffusersDiT`, which gives the converted model our DiT's
sampling interface (``forward_with_cfg`` is DiT's own).

The peers (method strings in ``duca_scripts.methods``):

* ``diffusers-fbcache`` -- ``FirstBlockCacheConfig(threshold=t)``: block 0 always runs; when the relative
  mean absolute change of its residual since the last full evaluation is at most ``t``, the other blocks
  return their input and the cached residual of blocks 1..L-1 is added.
* ``diffusers-pab`` -- ``PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=skip,
  spatial_attention_timestep_skip_range=(lo, hi))``: every block's self-attention (``attn1``) is computed
  every ``skip``-th call while ``lo < timestep < hi`` and its last output is reused otherwise. Only attention
  is skipped (diffusers has no MLP broadcast), so on the digits model (attention ~38% of a block's FLOPs at
  64 tokens) PAB cannot pass ~1.6x FLOPs speed-up whatever ``skip`` is.
* ``diffusers-taylorseer`` -- ``TaylorSeerCacheConfig(cache_interval=interval, max_order=o,
  disable_cache_before_step=warmup)`` on every block's attention and MLP (``attn1``, ``ff``; diffusers' default
  patterns ``^transformer_blocks.*attn`` name Flux-style ``attn`` modules and match nothing in this model),
  Taylor factors in float32 (diffusers' default bfloat16 would add a rounding our engine does not have).
* ``diffusers-magcache`` -- ``MagCacheConfig(threshold=t, max_skip_steps=k, retention_ratio=r)``: whole
  steps are skipped (every block returns its input plus the last residual of the block stack) while the
  accumulated error of the per-step residual magnitude ratios stays below ``t``. The ratios are
  model-specific: they are calibrated here, once per model and step count, by an uncached run on
  :data:`MAGCACHE_CALIBRATION_IMAGES` images of another seed (:data:`MAGCACHE_CALIBRATION_SEED`), with
  diffusers' calibration formula (mean over tokens of ``|r_t| / |r_{t-1}|``; a test checks the numbers
  against ``MagCacheConfig(calibrate=True)``).
* ``diffusers-fastercache`` -- ``FasterCacheConfig(unconditional_batch_skip_range=uncond,
  spatial_attention_block_skip_range=skip)`` with diffusers' default timestep ranges, frequency weights and
  attention weight (0.5), ``tensor_format="BCHW"``: inside its timestep range the transformer runs the
  conditional half only, except every ``uncond``-th evaluation, and the unconditional output is the
  conditional one plus the last measured low/high-frequency difference (FFT of the output); while it does,
  each block's self-attention is computed every ``skip``-th call and otherwise extrapolated from its last two
  outputs. Its CFG cache reads the batch as ``[uncond, cond]`` and splits the inputs it is told the names of:
  the copy swaps our ``[cond, uncond]`` halves around the call, and ``class_labels`` joins diffusers' list.
  The FFTs are not counted.

Not included, and why:

* ``SeaCacheConfig``: its indicator filters video latents ``(C, T, H, W)`` with a flow-matching noise model
  (signal ``1 - sigma``, ``sigma`` in [0, 1] from the scheduler through ``cache_context``) and needs a
  ``raw_vision_callback`` adapter per model; our DDIM is variance-preserving (signal ``sqrt(abar)``), so it
  would need a sigma mapping diffusers does not define.

Lifecycle: the hooks are enabled when a sampling run starts and disabled (``disable_cache``) when it ends or
raises, so every run starts from fresh hook state (tests: two runs give identical latents). The CFG halves
share one forward and one cache context (:data:`CACHE_CONTEXT`), as the cache-dit peers do
(``enable_separate_cfg=False``).

FLOPs: forward pre-hooks on the modules that only run when a part is really computed -- ``norm1.linear``
(adaLN), ``norm1.norm`` (the LayerNorms), ``attn1.to_q`` (self-attention), ``ff.net.0`` (MLP) of every block --
record, per model evaluation (a pre-hook on the transformer), which parts of which blocks ran, and each is
charged the reference formula of ``duca_common.cache.accounting`` for the batch it ran on (the engine's
per-module formulas; an uncached run costs exactly what the engine charges the uncached plan). The hooks' own
bookkeeping (residual comparisons, Taylor updates) is not counted, as the engine's token scoring and forecasts
are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from dit_duca.models import DiT
from duca_common.cache import TransformerDims
from duca_common.cache.accounting import adaln_flops, layernorm_flops, mlp_flops, self_attention_flops

from .methods import DiffusersPeerSettings
from .peers import PeerError

# One cache context for the whole [cond, uncond] batch of each evaluation.
CACHE_CONTEXT = "cfg_batch"
# diffusers' TaylorSeerCache on our DiT: every block's self-attention and MLP (re.fullmatch patterns).
TAYLORSEER_MODULES = (r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff")
TAYLORSEER_FACTORS_DTYPE = torch.float32
# FasterCache on our DiT: the output is an image-shaped (B, C, H, W) tensor; the inputs its CFG cache splits
# into halves (diffusers' list, plus our condition); the attention weight is diffusers' default.
FASTERCACHE_TENSOR_FORMAT = "BCHW"
FASTERCACHE_SPLIT_INPUTS = ("hidden_states", "timestep", "class_labels")
FASTERCACHE_ATTENTION_WEIGHT = 0.5
# MagCache calibration: an uncached run on a few images of a seed the tables do not use (they use seed 0).
MAGCACHE_CALIBRATION_IMAGES = 4
MAGCACHE_CALIBRATION_SEED = 1234
# diffusers' MagCache calibration adds this to the previous residual's norm (mag_cache.py).
MAGCACHE_NORM_EPS = 1e-8
# The first step has no previous residual; diffusers logs a neutral ratio for it.
MAGCACHE_FIRST_RATIO = 1.0

# The parts of a BasicTransformerBlock the FLOPs count charges, with the reference formula of each (dims with
# the batch the part ran on) and the sub-module that runs only when the part is computed.
PART_FLOPS: dict[str, Callable[[TransformerDims], int]] = {
    "adaln": adaln_flops,
    "norm": layernorm_flops,
    "attn": self_attention_flops,
    "mlp": lambda d: mlp_flops(d, d.tokens),
}
PART_PROBES: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "adaln": lambda block: block.norm1.linear,
    "norm": lambda block: block.norm1.norm,
    "attn": lambda block: block.attn1.to_q,
    "mlp": lambda block: block.ff.net[0],
}


class DiffusersPeerError(PeerError):
    """A diffusers hook that cannot run on this target; the message says why."""


@functools.cache
def caching_dit_class() -> type:
    """``DiTTransformer2DModel`` with diffusers' ``CacheMixin`` (``enable_cache`` / ``disable_cache`` /
    ``cache_context``), as diffusers' cache-capable transformers are declared (imported on first use)."""
    from diffusers import DiTTransformer2DModel
    from diffusers.models.cache_utils import CacheMixin

    class CachingDiT(DiTTransformer2DModel, CacheMixin):
        """diffusers' DiT transformer that accepts diffusers' cache configs."""

    return CachingDiT


class DiffusersDiT(torch.nn.Module):
    """The diffusers copy of a DiT, with our DiT's sampling interface (``forward(x, t, y)``,
    ``forward_with_cfg``, ``num_classes``, ``grid_size``) for ``duca_scripts.targets.dit_loop``."""

    def __init__(self, model) -> None:
        from dit_duca.diffusers_format import diffusers_config, match_official_dit, to_diffusers

        if not isinstance(model, DiT):
            raise DiffusersPeerError(f"diffusers peers run on our DiT (converted to DiTTransformer2DModel); "
                                     f"this target's model is a {type(model).__name__}")
        super().__init__()
        param = next(model.parameters())
        transformer = caching_dit_class().from_config(diffusers_config(model))
        transformer.load_state_dict(to_diffusers(model.state_dict(), model.depth), strict=True)
        match_official_dit(transformer)
        transformer.to(param.device)
        if param.dtype != torch.float32:          # (diffusers warns about any dtype cast, even a no-op one)
            transformer.to(param.dtype)
        self.transformer = transformer.eval().requires_grad_(False)
        self.num_classes = model.num_classes
        self.cfg_channels = model.cfg_channels
        self.grid_size = model.grid_size
        self.depth = model.depth
        self.current_timestep: float | None = None     # PAB's / FasterCache's timestep callback reads it
        self.uncond_first = False                       # FasterCache: present the CFG batch as [uncond, cond]
        self.magcache_ratios: dict[int, list[float]] = {}  # per step count, calibrated once

    # DiT's own CFG (the batch [cond, uncond], the guided channels); it calls self.forward below.
    forward_with_cfg = DiT.forward_with_cfg

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.current_timestep = float(t.flatten()[0])
        swap = None
        if self.uncond_first:                   # swapping the halves is its own inverse
            half = len(x) // 2
            swap = torch.cat([torch.arange(half, len(x)), torch.arange(half)]).to(x.device)
            x, t, y = x[swap], t[swap], y[swap]
        with self.transformer.cache_context(CACHE_CONTEXT):
            out = self.transformer(hidden_states=x, timestep=t, class_labels=y).sample
        return out if swap is None else out[swap]


def diffusers_twin(target) -> DiffusersDiT:
    """The diffusers copy of ``target.model``, converted at first use and kept on the target."""
    twin = target.peer_state.get("diffusers")
    if twin is None:
        if target.family != "dit":
            raise DiffusersPeerError(f"diffusers peers are wired for DiT targets (DiTTransformer2DModel); "
                                     f"{target.name} is a {target.family} model")
        twin = target.peer_state["diffusers"] = DiffusersDiT(target.model)
    return twin


@dataclass
class DiffusersPeerRun:
    """What one diffusers-peer sampling run computed: per model evaluation, (block, part, batch) that ran."""

    depth: int
    evaluations: list[list[tuple[int, str, int]]] = field(default_factory=list)

    def reference_flops(self, dims: TransformerDims) -> int:
        return sum(PART_FLOPS[part](dataclasses.replace(dims, batch=batch))
                   for parts in self.evaluations for _, part, batch in parts)

    def _full(self, parts: list[tuple[int, str, int]], batch: int) -> bool:
        return len({(b, p) for b, p, n in parts if n == batch}) == self.depth * len(PART_FLOPS)

    @property
    def cached_evaluations(self) -> int:
        batch = max((n for parts in self.evaluations for _, _, n in parts), default=0)
        return sum(1 for parts in self.evaluations if not self._full(parts, batch))

    def table(self) -> str:
        """One letter per evaluation: F every part of every block ran, - no block part ran, C some did."""
        batch = max((n for parts in self.evaluations for _, _, n in parts), default=0)
        letters = "".join("F" if self._full(p, batch) else "-" if not p else "C" for p in self.evaluations)
        return f"diffusers block parts per evaluation (F all, C some, - none): {letters}"


@contextlib.contextmanager
def recording(twin: DiffusersDiT) -> Iterator[DiffusersPeerRun]:
    """Record, per transformer call, which parts of which blocks ran (forward pre-hooks, removed on exit)."""
    record = DiffusersPeerRun(twin.depth)

    def on_part(i: int, part: str, args: tuple) -> None:
        record.evaluations[-1].append((i, part, int(args[0].shape[0])))

    hooks = [twin.transformer.register_forward_pre_hook(lambda mod, args: record.evaluations.append([]))]
    for i, block in enumerate(twin.transformer.transformer_blocks):
        for part, probe in PART_PROBES.items():
            hooks.append(probe(block).register_forward_pre_hook(
                lambda mod, args, i=i, part=part: on_part(i, part, args)))
    try:
        yield record
    finally:
        for h in hooks:
            h.remove()


def magcache_ratios(target, twin: DiffusersDiT, steps: int) -> list[float]:
    """MagCache's per-step magnitude ratios for this model and step count (calibrated once, then kept):
    ``mean(|r_t| / (|r_{t-1}| + eps))`` over tokens and the batch, ``r_t`` = last block's output minus the
    first block's input at step t, on an uncached run of the calibration images."""
    if steps not in twin.magcache_ratios:
        blocks = twin.transformer.transformer_blocks
        held: dict[str, torch.Tensor] = {}
        ratios: list[float] = []

        def on_input(mod, args) -> None:
            held["input"] = args[0]

        def on_output(mod, args, out) -> None:
            residual = (out - held["input"]).float()
            prev = held.get("residual")
            ratios.append(MAGCACHE_FIRST_RATIO if prev is None else float(
                (residual.norm(dim=-1) / (prev.norm(dim=-1) + MAGCACHE_NORM_EPS)).mean()))
            held["residual"] = residual

        hooks = [blocks[0].register_forward_pre_hook(on_input), blocks[-1].register_forward_hook(on_output)]
        noise = target.noise(MAGCACHE_CALIBRATION_IMAGES, MAGCACHE_CALIBRATION_SEED)
        labels = target.labels(MAGCACHE_CALIBRATION_IMAGES)
        try:
            with torch.no_grad(), target.using_model(twin):
                target.sample(noise, labels, steps)
        finally:
            for h in hooks:
                h.remove()
        if len(ratios) != steps:
            raise DiffusersPeerError(f"MagCache calibration saw {len(ratios)} model evaluations for {steps} steps; "
                                     f"it needs one evaluation per step")
        twin.magcache_ratios[steps] = ratios
    return twin.magcache_ratios[steps]


def hook_config(target, twin: DiffusersDiT, peer: DiffusersPeerSettings, steps: int):
    """The diffusers cache config of ``peer`` (a fresh object per run: diffusers may fill in its fields)."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    if peer.kind == "fbcache":
        return FirstBlockCacheConfig(threshold=peer.threshold)
    if peer.kind == "pab":
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=peer.skip,
                                               spatial_attention_timestep_skip_range=(peer.lo, peer.hi),
                                               current_timestep_callback=lambda: twin.current_timestep)
    if peer.kind == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=peer.interval, max_order=peer.order,
                                     disable_cache_before_step=peer.warmup,
                                     taylor_factors_dtype=TAYLORSEER_FACTORS_DTYPE,
                                     cache_identifiers=list(TAYLORSEER_MODULES))
    if peer.kind == "magcache":
        return MagCacheConfig(threshold=peer.threshold, max_skip_steps=peer.max_skip, retention_ratio=peer.retention,
                              num_inference_steps=steps, mag_ratios=magcache_ratios(target, twin, steps))
    if peer.kind == "fastercache":
        return FasterCacheConfig(unconditional_batch_skip_range=peer.uncond,
                                 spatial_attention_block_skip_range=peer.skip,
                                 current_timestep_callback=lambda: twin.current_timestep,
                                 attention_weight_callback=lambda module: FASTERCACHE_ATTENTION_WEIGHT,
                                 tensor_format=FASTERCACHE_TENSOR_FORMAT,
                                 _unconditional_conditional_input_kwargs_identifiers=list(FASTERCACHE_SPLIT_INPUTS))
    raise DiffusersPeerError(f"unknown diffusers peer kind {peer.kind!r}; known: fbcache, pab, taylorseer, magcache, "
                             f"fastercache")


def prepare(target, peer: DiffusersPeerSettings, steps: int) -> None:
    """Do the one-off work of a peer before anything is timed: the conversion, MagCache's calibration."""
    twin = diffusers_twin(target)
    if peer.kind == "magcache":
        magcache_ratios(target, twin, steps)


@contextlib.contextmanager
def attach_diffusers_peer(target, peer: DiffusersPeerSettings, steps: int) -> Iterator[DiffusersPeerRun]:
    """Inside the block, ``target.sample`` runs the diffusers copy of the model with ``peer``'s hook enabled
    (fresh state) and records what it computed; the hook is disabled on exit, also when sampling raises."""
    twin = diffusers_twin(target)
    config = hook_config(target, twin, peer, steps)
    with _quiet(EXPERIMENTAL_WARNING_LOGGERS):
        twin.transformer.enable_cache(config)
    twin.uncond_first = peer.kind == "fastercache"
    try:
        with recording(twin) as record, target.using_model(twin):
            yield record
    finally:
        twin.uncond_first = False
        twin.transformer.disable_cache()


# diffusers warns at every enable_cache that FasterCache is experimental; said once in the docs instead.
EXPERIMENTAL_WARNING_LOGGERS = ("diffusers.hooks.faster_cache",)


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Warnings of the named loggers are dropped inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
