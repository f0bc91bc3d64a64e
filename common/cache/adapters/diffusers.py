"""Token-wise caching (FORA, ToCa, DuCa, TaylorSeer) on diffusers' DiT and PixArt-alpha, attached from outside.

One call attaches the engine to a pipeline, one removes it::

    from duca_common.cache.adapters.diffusers import apply_cache, remove_cache

    apply_cache(pipe, preset="dit-duca-n3-r95")          # or config=CacheConfig(...)
    images = pipe(class_labels=[207], num_inference_steps=50).images
    print(cache_of(pipe).feature_cache.last_trace.table())
    remove_cache(pipe)                                     # the plain forward again, bit for bit

How it attaches (no diffusers code is edited; everything is undone by :func:`remove_cache`):

* each ``BasicTransformerBlock`` gets an instance ``forward`` that, inside a cache session, runs the block's
  own sub-modules (``norm1``, ``attn1``, ``attn2``, ``norm2``/``norm3``, ``ff``) through the engine's
  :func:`~duca_common.cache.residual`, the same pattern as our own models; outside a session it calls the
  class's forward unchanged. The last block also hands the trunk output to the engine (aggressive steps).
* the engine's selector statistics come from :class:`StatAttnProcessor`, a diffusers-style attention
  processor called only when the engine asks for one: value norms and attention-received keep SDPA (the
  latter without the tokens x tokens map); cross-attention entropy forms the small image x text map.
* a forward pre-hook on the transformer tells the session which model evaluation this is (0, 1, ...).
* the pipeline's class is swapped for a subclass of the same name whose ``__call__`` opens a session
  around the original call, so the state is released when the call returns or raises. The session opens at
  the first transformer call, when the pipeline has set its scheduler's timesteps: the number of steps is
  ``len(pipe.scheduler.timesteps)`` and the token grid is the latent's; CFG is on when the call's
  ``guidance_scale`` (or its default) is > 1, the rule of both pipelines.

CFG halves: ``DiTPipeline`` batches ``[cond, uncond]`` (labels, then the null class 1000) as DiT does;
``PixArtAlphaPipeline`` batches ``[uncond, cond]``. The engine only assumes two equal halves: random
scores are drawn once and given to both halves, and the shared statistics (cross-attention entropy,
PixArt's value norms) are averaged over the two halves. Both are symmetric, so either order gives the
same tokens as our models.

Without a pipeline (your own sampling loop), attach to the transformer and open a session yourself::

    handle = apply_cache(transformer, preset="pixart-duca-r25")
    with handle.session(num_steps=20, cfg_halves=True):
        for t in timesteps:
            out = transformer(latents_in, timestep=t, ...)      # each call is the next step
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from duca_common.cache import (
    BlockLayout,
    CacheConfig,
    FeatureCache,
    get_preset,
    residual,
)
from duca_common.cache.attention_score import sdpa_and_received
from duca_common.layers import cross_attention_entropy

# Both pipelines enable classifier-free guidance when guidance_scale > 1 (pipeline_dit.py,
# pipeline_pixart_alpha.py: ``do_classifier_free_guidance = guidance_scale > 1.0``).
CFG_THRESHOLD = 1.0
# diffusers turns a 0/1 encoder mask into a bias of 0 (keep) / -10000 (discard)
# (PixArtTransformer2DModel.forward); anything below half of that is a discarded key.
DISCARD_BIAS_THRESHOLD = -5000.0
# adaLN vectors per block, shift/scale/gate of attention then of the MLP (models.md A.3, B.2; DiT and PixArt)
NUM_MODULATIONS = 6
HANDLE_ATTRIBUTE = "_duca_cache"  # where the handle lives on the transformer


# ------------------------------------------------------------------------------------------------
# Families: which diffusers transformers, which block type, which engine layout
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str  # the preset family ("dit", "pixart")
    norm_type: str  # BasicTransformerBlock.norm_type of its blocks
    layout: Callable[[int], BlockLayout]
    shares_value_norm: bool  # PixArt's reference averages ||v|| over the CFG halves; DiT's does not


def dit_layout(depth: int) -> BlockLayout:
    """DiT: attention then MLP; the MLP is token-wise; steps count down (as ``dit_duca.models``)."""
    return BlockLayout(depth, ("attn", "mlp"), tokenwise=("mlp",), self_attn="attn", step_counts_down=True)


def pixart_layout(depth: int) -> BlockLayout:
    """PixArt-alpha: self-attention, cross-attention, MLP; the last two are token-wise (as ``pixart_duca``)."""
    return BlockLayout(
        depth,
        ("attn", "cross_attn", "mlp"),
        tokenwise=("cross_attn", "mlp"),
        self_attn="attn",
        cross_attn="cross_attn",
        step_counts_down=False,
    )


FAMILIES = {
    "DiTTransformer2DModel": Family("dit", "ada_norm_zero", dit_layout, shares_value_norm=False),
    "PixArtTransformer2DModel": Family("pixart", "ada_norm_single", pixart_layout, shares_value_norm=True),
}


def _family_of(transformer) -> Family:
    for cls in type(transformer).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise TypeError(
        f"apply_cache supports diffusers' {' and '.join(FAMILIES)} (DiTPipeline, PixArtAlphaPipeline); "
        f"got a {type(transformer).__name__}"
    )


def _check_blocks(transformer, family: Family) -> None:
    """Refuse block features the wrapped forward does not implement, before anything is changed."""
    for i, block in enumerate(transformer.transformer_blocks):
        problems = []
        if block.norm_type != family.norm_type:
            problems.append(f"norm_type {block.norm_type!r} (expected {family.norm_type!r})")
        if block.pos_embed is not None:
            problems.append("per-block positional embeddings")
        if block.only_cross_attention or hasattr(block, "fuser"):
            problems.append("only-cross-attention / GLIGEN fuser")
        if (family.name == "pixart") != (block.attn2 is not None):
            problems.append("a cross-attention layout that does not match the model family")
        if problems:
            raise ValueError(
                f"transformer block {i} has {', '.join(problems)}; the cache adapter implements "
                f"the DiT and PixArt-alpha blocks only"
            )


# ------------------------------------------------------------------------------------------------
# Selector statistics: a diffusers-style attention processor, called when the engine asks for one
# ------------------------------------------------------------------------------------------------


class StatAttnProcessor:
    """Attention as diffusers' ``AttnProcessor2_0`` computes it, plus the statistic the engine asks for.

    ``stat``: ``"value_norm"`` (SDPA kept; returns ||v|| per head and token, (B, H, N)),
    ``"attention_received"`` (SDPA kept, the head-mean map summed over queries computed in query chunks by
    ``duca_common.cache.attention_score``, (B, N); explicit softmax when a mask is given) or
    ``"cross_entropy"`` (explicit softmax over the text tokens; entropy per image token, (B, n)).
    Returns ``(output, statistic)``. ``share_halves`` averages value norms over the two CFG halves.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        stat: str,
        cfg_halves: bool = False,
        share_halves: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError(
                "the cache adapter's attention statistics support token sequences (B, N, C) "
                "without spatial or group norm (the DiT and PixArt-alpha attention)"
            )
        b = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        bias = None
        if attention_mask is not None:
            bias = attn.prepare_attention_mask(attention_mask, context.shape[1], b)
            bias = bias.view(b, attn.heads, -1, bias.shape[-1])
        if getattr(attn, "fused_projections", False) and encoder_hidden_states is None:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (z.view(b, -1, attn.heads, head_dim).transpose(1, 2) for z in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if stat == "value_norm":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
            statistic = v.float().norm(dim=-1)  # (B, H, N)
            if share_halves and cfg_halves:
                statistic = statistic.view(2, b // 2, *statistic.shape[1:]).mean(0).repeat(2, 1, 1)
        elif stat == "attention_received" and bias is None:
            # SDPA output and the received attention without the tokens x tokens map, as our DiT
            out, statistic = sdpa_and_received(q, k, v, attn.scale)
        elif stat in ("attention_received", "cross_entropy"):
            scores = (q @ k.transpose(-2, -1)).float() * attn.scale
            if bias is not None:
                scores = scores + bias.float()
            probs = scores.softmax(dim=-1)
            out = probs.to(v.dtype) @ v
            if stat == "attention_received":
                statistic = probs.mean(dim=1).sum(dim=1)  # (B, N)
            else:
                keep = (
                    torch.ones(b, k.shape[2], device=q.device)
                    if bias is None
                    else (bias[:, 0, 0, :] > DISCARD_BIAS_THRESHOLD).float()
                )
                statistic = cross_attention_entropy(probs, keep, cfg_halves)  # (B, n)
        else:
            raise ValueError(f"the cache adapter cannot compute the selector statistic {stat!r}")
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor, statistic


STAT_PROCESSOR = StatAttnProcessor()


def _feed_forward(block, x: torch.Tensor) -> torch.Tensor:
    chunk = block._chunk_size
    if chunk is not None and x.shape[block._chunk_dim] % chunk == 0:
        from diffusers.models.attention import _chunked_feed_forward

        return _chunked_feed_forward(block.ff, x, block._chunk_dim, chunk)
    return block.ff(x)


# ------------------------------------------------------------------------------------------------
# The wrapped block forwards: the diffusers block's own computation, through the engine
# ------------------------------------------------------------------------------------------------


def _dit_block(block, cache, run_cfg: bool, hidden_states, timestep, class_labels, kwargs) -> torch.Tensor:
    """``BasicTransformerBlock`` with ``norm_type="ada_norm_zero"`` (DiT), op for op."""
    if cache.skip:
        return hidden_states
    norm1 = block.norm1
    emb = norm1.linear(norm1.silu(norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(NUM_MODULATIONS, dim=1)

    def attn(t: torch.Tensor, stat: str | None):
        normed = norm1.norm(t) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        if stat is None:
            return block.attn1(normed, encoder_hidden_states=None, attention_mask=None, **kwargs)
        return STAT_PROCESSOR(block.attn1, normed, stat=stat, cfg_halves=run_cfg, share_halves=False)

    def mlp(t: torch.Tensor, stat: str | None):
        return _feed_forward(block, block.norm3(t) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])

    x = residual(cache, "attn", hidden_states, attn, gate_msa.unsqueeze(1))
    return residual(cache, "mlp", x, mlp, gate_mlp.unsqueeze(1))


def _pixart_block(
    block,
    cache,
    run_cfg: bool,
    hidden_states,
    timestep,
    attention_mask,
    encoder_hidden_states,
    encoder_attention_mask,
    kwargs,
) -> torch.Tensor:
    """``BasicTransformerBlock`` with ``norm_type="ada_norm_single"`` (PixArt-alpha), op for op."""
    if cache.skip:
        return hidden_states
    b = hidden_states.shape[0]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[None] + timestep.reshape(b, NUM_MODULATIONS, -1)
    ).chunk(NUM_MODULATIONS, dim=1)

    def attn(t: torch.Tensor, stat: str | None):
        normed = block.norm1(t) * (1 + scale_msa) + shift_msa
        if stat is None:
            return block.attn1(normed, encoder_hidden_states=None, attention_mask=attention_mask, **kwargs)
        return STAT_PROCESSOR(
            block.attn1, normed, attention_mask=attention_mask, stat=stat, cfg_halves=run_cfg, share_halves=True
        )

    def cross_attn(t: torch.Tensor, stat: str | None):
        if stat is None:
            return block.attn2(
                t, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs
            )
        return STAT_PROCESSOR(
            block.attn2, t, encoder_hidden_states, encoder_attention_mask, stat=stat, cfg_halves=run_cfg
        )

    def mlp(t: torch.Tensor, stat: str | None):
        return _feed_forward(block, block.norm2(t) * (1 + scale_mlp) + shift_mlp)

    x = residual(cache, "attn", hidden_states, attn, gate_msa)
    x = residual(cache, "cross_attn", x, cross_attn)
    return residual(cache, "mlp", x, mlp, gate_mlp)


# ------------------------------------------------------------------------------------------------
# The handle
# ------------------------------------------------------------------------------------------------


class DiffusersCache:
    """The engine attached to one diffusers transformer: its :class:`FeatureCache` and sessions."""

    def __init__(self, transformer, config: CacheConfig, family: Family, profile: bool = False) -> None:
        self.transformer = transformer
        self.family = family
        self.profile = profile  # pipeline calls time the engine's own work (last_timers)
        self.feature_cache = FeatureCache(config, family.layout(len(transformer.transformer_blocks)))
        self._calls = 0
        self._lazy: dict | None = None  # set while a pipeline call waits for its first forward
        self._stack: contextlib.ExitStack | None = None
        self._hook = None

    @property
    def config(self) -> CacheConfig:
        return self.feature_cache.config

    def default_grid(self) -> tuple[int, int]:
        side = self.transformer.config.sample_size // self.transformer.config.patch_size
        return (side, side)

    @contextlib.contextmanager
    def session(
        self, num_steps: int, *, cfg_halves: bool, grid: tuple[int, int] | None = None, profile: bool = False
    ) -> Iterator:
        """One sampling run of ``num_steps`` transformer calls; each call is the next step. The state is
        dropped when the block exits, also on an exception."""
        with self.feature_cache.session(
            num_steps, grid=grid or self.default_grid(), cfg_halves=cfg_halves, profile=profile
        ) as run:
            self._calls = 0
            try:
                yield run
            finally:
                self._calls = 0

    @contextlib.contextmanager
    def pipeline_call(self, scheduler, cfg_halves: bool) -> Iterator[None]:
        """Around one pipeline call: the session opens at the first transformer call (the scheduler knows its
        timesteps by then) and closes when the call ends or raises."""
        if self._lazy is not None:
            raise RuntimeError("this pipeline is already inside a cached call; pipeline calls do not nest")
        self._lazy = {"scheduler": scheduler, "cfg_halves": cfg_halves}
        self._stack = contextlib.ExitStack()
        try:
            yield
        finally:
            self._lazy = None
            stack, self._stack = self._stack, None
            stack.close()

    def _pre_forward(self, module, args, kwargs) -> None:
        if self._lazy is not None and self.feature_cache.active is None and self._stack is not None:
            hidden = args[0] if args else kwargs["hidden_states"]
            patch = self.transformer.config.patch_size
            timesteps = getattr(self._lazy["scheduler"], "timesteps", None)
            if timesteps is None:
                raise RuntimeError(
                    "the pipeline's scheduler has no timesteps at the first transformer call; "
                    "cannot size the cache session"
                )
            self._stack.enter_context(
                self.session(
                    len(timesteps),
                    cfg_halves=self._lazy["cfg_halves"],
                    grid=(hidden.shape[-2] // patch, hidden.shape[-1] // patch),
                    profile=self.profile,
                )
            )
        run = self.feature_cache.active
        if run is not None:
            if self._calls >= run.plan.num_steps:
                raise RuntimeError(
                    f"transformer call {self._calls + 1} in a cache session of {run.plan.num_steps} "
                    f"steps: the adapter expects one transformer call per step (per scheduler "
                    f"timestep in a pipeline call); open a session with the right num_steps"
                )
            run.set_step(self._calls)
            self._calls += 1

    # -- installation ---------------------------------------------------------------------------
    def install(self) -> None:
        blocks = self.transformer.transformer_blocks
        for i, block in enumerate(blocks):
            block.forward = self._block_forward(block, i, last=i == len(blocks) - 1)
        self._hook = self.transformer.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        setattr(self.transformer, HANDLE_ATTRIBUTE, self)

    def uninstall(self) -> None:
        if self.feature_cache.active is not None:
            raise RuntimeError("cannot remove the cache while a sampling session is open")
        for block in self.transformer.transformer_blocks:
            if "forward" in block.__dict__:
                del block.forward
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if getattr(self.transformer, HANDLE_ATTRIBUTE, None) is self:
            delattr(self.transformer, HANDLE_ATTRIBUTE)

    def _block_forward(self, block, index: int, last: bool) -> Callable[..., torch.Tensor]:
        plain = type(block).forward.__get__(block)
        fc, family = self.feature_cache, self.family

        def forward(
            hidden_states,
            attention_mask=None,
            encoder_hidden_states=None,
            encoder_attention_mask=None,
            timestep=None,
            cross_attention_kwargs=None,
            class_labels=None,
            added_cond_kwargs=None,
        ):
            step = fc.current_step()
            if step is None:
                return plain(
                    hidden_states,
                    attention_mask,
                    encoder_hidden_states,
                    encoder_attention_mask,
                    timestep,
                    cross_attention_kwargs,
                    class_labels,
                    added_cond_kwargs,
                )
            kwargs = dict(cross_attention_kwargs or {})
            if kwargs.pop("gligen", None) is not None:
                raise ValueError("GLIGEN inputs are not supported by the cache adapter")
            cache, run_cfg = step.block(index), fc.active.cfg_halves
            if family.name == "dit":
                out = _dit_block(block, cache, run_cfg, hidden_states, timestep, class_labels, kwargs)
            else:
                out = _pixart_block(
                    block,
                    cache,
                    run_cfg,
                    hidden_states,
                    timestep,
                    attention_mask,
                    encoder_hidden_states,
                    encoder_attention_mask,
                    kwargs,
                )
            return step.trunk(out) if last else out

        return forward


# ------------------------------------------------------------------------------------------------
# The pipeline wrapper: a same-named subclass whose __call__ opens the session
# ------------------------------------------------------------------------------------------------


def _cfg_halves_of(original_call, pipe, args, kwargs) -> bool:
    params = inspect.signature(original_call).parameters
    if "guidance_scale" not in params:
        return False
    bound = inspect.signature(original_call).bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    return float(bound.arguments["guidance_scale"]) > CFG_THRESHOLD


def _cached_class(cls: type) -> type:
    original_call = cls.__call__

    def __call__(self, *args, **kwargs):
        handle = getattr(getattr(self, "transformer", None), HANDLE_ATTRIBUTE, None)
        if handle is None:
            return original_call(self, *args, **kwargs)
        with handle.pipeline_call(self.scheduler, _cfg_halves_of(original_call, self, args, kwargs)):
            return original_call(self, *args, **kwargs)

    __call__.__doc__ = original_call.__doc__
    # Same name and module, so save_pretrained writes the original class name and repr() reads the same.
    return type(
        cls.__name__,
        (cls,),
        {
            "__call__": __call__,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_duca_original_class": cls,
        },
    )


def _split_target(target):
    """(pipeline or None, transformer) for a pipeline or a bare transformer."""
    transformer = getattr(target, "transformer", None)
    if transformer is not None and hasattr(transformer, "transformer_blocks"):
        return target, transformer
    if hasattr(target, "transformer_blocks"):
        return None, target
    raise TypeError(
        f"apply_cache takes a diffusers pipeline with a .transformer (DiTPipeline, PixArtAlphaPipeline) "
        f"or the transformer itself; got a {type(target).__name__}"
    )


def _resolve_config(family: Family, preset: str | None, config: CacheConfig | None) -> CacheConfig:
    if (preset is None) == (config is None):
        raise ValueError("apply_cache needs exactly one of preset='...' or config=CacheConfig(...)")
    if config is not None:
        if not isinstance(config, CacheConfig):
            raise TypeError(f"config must be a CacheConfig, got {type(config).__name__}")
        return config
    chosen = get_preset(preset)
    if chosen.model != family.name:
        raise ValueError(
            f"preset {preset!r} is for {chosen.model} models but this transformer is a {family.name} "
            f"model; use a preset whose name starts with '{family.name}-'"
        )
    return chosen.config


def apply_cache(
    target, preset: str | None = None, *, config: CacheConfig | None = None, profile: bool = False
) -> DiffusersCache:
    """Attach the cache engine to a diffusers DiT / PixArt-alpha pipeline (or its transformer).

    Give a preset name (``"dit-duca-n3-r95"``, ``"pixart-duca-r25"``, ...: ``duca_common.cache.presets``) or a
    :class:`CacheConfig`. Calling it again replaces the configuration. Returns the handle; its
    ``feature_cache.last_trace`` describes the last run (``last_timers`` the engine's own time with
    ``profile=True``, ``last_peak_bytes`` the cache's peak size).
    """
    pipe, transformer = _split_target(target)
    family = _family_of(transformer)
    cfg = _resolve_config(family, preset, config)
    _check_blocks(transformer, family)
    if getattr(transformer, HANDLE_ATTRIBUTE, None) is not None:
        remove_cache(target)
    handle = DiffusersCache(transformer, cfg, family, profile=profile)
    handle.install()
    if pipe is not None and not hasattr(type(pipe), "_duca_original_class"):
        pipe.__class__ = _cached_class(type(pipe))
    return handle


def remove_cache(target) -> None:
    """Undo :func:`apply_cache`: the plain blocks, no hook, the pipeline's own class. A no-op when not applied."""
    pipe, transformer = _split_target(target)
    handle = getattr(transformer, HANDLE_ATTRIBUTE, None)
    if handle is not None:
        handle.uninstall()
    if pipe is not None and hasattr(type(pipe), "_duca_original_class"):
        pipe.__class__ = type(pipe)._duca_original_class


def cache_of(target) -> DiffusersCache | None:
    """The handle attached to a pipeline or transformer, or None."""
    _, transformer = _split_target(target)
    return getattr(transformer, HANDLE_ATTRIBUTE, None)
