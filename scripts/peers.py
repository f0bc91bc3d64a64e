"""Peer baselines on our DiT: cache-dit's DBCache and its TaylorSeer, FoCa and DMD calibrators (extra ``peers``).

cache-dit (``pip install -e ".[peers]"``, ``cache-dit==1.5.3``) wraps a custom transformer through a
``BlockAdapter``: it swaps ``model.blocks`` for one module that runs the first ``Fn`` blocks, compares
their residual with the previous step's (relative L1), and when the change is below
``residual_diff_threshold`` adds the cached residual of the remaining blocks instead of running them
(``Bn`` last blocks still run). Our ``DiTBlock.forward(x, c, cache)`` takes the hidden state first and
returns only the hidden state, which is cache-dit's ``ForwardPattern.Pattern_3``; the extra positional
arguments (``c``, and ``None`` for our engine's view) are passed through to every block. The run uses
no engine session (the engine's method is 'none'), the CFG halves share one forward (cache-dit's
``enable_separate_cfg=False``), and the context is refreshed before every sampling run.

FLOPs of a peer run: forward pre-hooks on the original blocks record which blocks ran in every model
evaluation; each computed block costs the reference formula's full block (LayerNorms, adaLN, attention,
MLP on all tokens), a skipped block 0. The residual comparison is not counted, as the engine's token
scoring is not. Measured FLOPs are not reported for peers: cache-dit decides from the values, so the
run cannot be replayed on the meta device.

diffusers' own cache hooks (FirstBlockCache, Pyramid Attention Broadcast, TaylorSeerCache, MagCache,
FasterCache) run on the diffusers copy of our DiT: ``duca_scripts.diffusers_peers``. :func:`attach_peer` and
:func:`check_peer_support` take either kind of peer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from duca_common.cache import TransformerDims
from duca_common.cache.accounting import adaln_flops, layernorm_flops, mlp_flops, self_attention_flops
from duca_common.errors import UsageError

from .methods import DiffusersPeerSettings, PeerSettings
from .targets import model_family

CACHE_DIT_VERSION = "1.5.3"          # the version the "peers" extra pins (pyproject.toml)
INSTALL_HINT = f'pip install -e ".[peers]"  (installs cache-dit=={CACHE_DIT_VERSION})'


class PeerError(UsageError):
    """A peer baseline that cannot run here; the message says why and what to install (the CLIs exit 2)."""


def _import_cache_dit():
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")     # cache-dit logs every context at INFO
    try:
        import cache_dit
    except ImportError as exc:
        raise PeerError(f"cache-dit baselines need the 'peers' extra: {INSTALL_HINT} ({exc})") from None
    return cache_dit


def check_peer_support(model_name: str, peers: list | None = None) -> None:
    """Fail early (before any model is built) when ``peers`` (default: a cache-dit peer) cannot run on this
    model or environment. diffusers is a dependency, so only cache-dit peers need the extra."""
    peers = [PeerSettings("dbcache")] if peers is None else peers
    if any(isinstance(p, PeerSettings) for p in peers):
        _import_cache_dit()
    if peers and model_family(model_name) == "pixart":
        raise PeerError("peers are wired for our DiT only (PixArt blocks take a caption and mask; not adapted "
                        "here): drop the cachedit-/diffusers- methods")


def prepare_peers(target, peers: list, steps: int) -> None:
    """One-off work of the peers before anything is timed (the diffusers conversion, MagCache calibration)."""
    from .diffusers_peers import prepare

    for peer in peers:
        if isinstance(peer, DiffusersPeerSettings):
            prepare(target, peer, steps)


@dataclass
class PeerRun:
    """What one peer sampling run computed: the blocks that ran in each model evaluation."""

    depth: int
    evaluations: list[list[int]] = field(default_factory=list)

    def reference_flops(self, dims: TransformerDims) -> int:
        per_block = (adaln_flops(dims) + layernorm_flops(dims) + self_attention_flops(dims)
                     + mlp_flops(dims, dims.tokens))
        return per_block * sum(len(blocks) for blocks in self.evaluations)

    @property
    def cached_evaluations(self) -> int:
        return sum(1 for blocks in self.evaluations if len(blocks) < self.depth)

    def table(self) -> str:
        """One letter per evaluation: F all blocks ran, C cached (only the Fn/Bn blocks ran)."""
        letters = "".join("F" if len(b) == self.depth else "C" for b in self.evaluations)
        return f"cache-dit blocks per evaluation (F full, C cached): {letters}"


def cache_config(peer: PeerSettings, steps: int):
    cache_dit = _import_cache_dit()
    return cache_dit.DBCacheConfig(Fn_compute_blocks=peer.fn, Bn_compute_blocks=peer.bn,
                                   residual_diff_threshold=peer.rdt, max_warmup_steps=peer.warmup,
                                   max_cached_steps=peer.max_cached, num_inference_steps=steps,
                                   enable_separate_cfg=False)


def calibrator_config(peer: PeerSettings):
    """cache-dit's calibrator for ``peer.kind`` (None for plain DBCache): TaylorSeer (order ``peer.order``),
    FoCa (its BDF2 predictor + Heun corrector; no settings) or DMD (an exponential-basis forecast from the
    last compute steps; cache-dit's defaults), all as cache-dit 1.5.3 ships them."""
    cache_dit = _import_cache_dit()
    if peer.kind == "taylorseer":
        return cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=peer.order)
    if peer.kind == "foca":
        return cache_dit.FoCaCalibratorConfig()
    if peer.kind == "dmd":
        return cache_dit.DMDCalibratorConfig()
    return None


@contextlib.contextmanager
def attach_peer(target, peer: PeerSettings | DiffusersPeerSettings, steps: int) -> Iterator:
    """Inside the block ``target.sample`` runs the peer; yields its record (``reference_flops(dims)``,
    ``table()``, ``evaluations``). A diffusers peer runs the diffusers copy of the model
    (``duca_scripts.diffusers_peers.attach_diffusers_peer``); a cache-dit peer wraps ``target.model`` with
    cache-dit and records the blocks that ran, without the engine's session (cache-dit hooks the blocks).
    """
    if isinstance(peer, DiffusersPeerSettings):
        from .diffusers_peers import attach_diffusers_peer

        with attach_diffusers_peer(target, peer, steps) as record:
            yield record
        return
    cache_dit = _import_cache_dit()
    model = target.model
    depth = len(model.blocks)
    if peer.fn + peer.bn > depth:
        raise PeerError(f"cache-dit Fn={peer.fn} + Bn={peer.bn} compute blocks exceed the model's {depth} blocks")
    record = PeerRun(depth)
    # Block 0 runs in every evaluation (Fn >= 1), so its call opens a new evaluation record. (A hook on the
    # model would miss calls: DiT.forward_with_cfg calls self.forward directly.)
    def on_block(i: int) -> None:
        if i == 0:
            record.evaluations.append([])
        record.evaluations[-1].append(i)

    hooks = [block.register_forward_pre_hook(lambda mod, args, i=i: on_block(i))
             for i, block in enumerate(model.blocks)]
    calibrator = calibrator_config(peer)
    adapter = cache_dit.BlockAdapter(transformer=model, blocks=model.blocks,
                                     forward_pattern=cache_dit.ForwardPattern.Pattern_3,
                                     check_forward_pattern=False)
    cache_dit.enable_cache(adapter, cache_config=cache_config(peer, steps), calibrator_config=calibrator)
    try:
        cache_dit.refresh_context(model, num_inference_steps=steps)
        with target.without_engine():
            yield record
    finally:
        cache_dit.disable_cache(model)
        for h in hooks:
            h.remove()
        if isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) != depth:
            raise PeerError("cache-dit did not restore the model's blocks after disable_cache")
