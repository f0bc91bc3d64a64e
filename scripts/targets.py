"""The models the benchmark and the table run on, behind one small interface.

A :class:`Target` owns a model wired to the cache engine and knows how to draw fixed noise and
conditions, run the *real* sampling loop of its stack (DiT: the respaced DDIM loop of
``dit_duca.diffusion``; PixArt: DPM-Solver++ of ``pixart_duca.pipeline``) inside the model's cache
session, and repeat the run on the meta device to count FLOPs. The VAE is excluded everywhere: the
benchmark measures the transformer and the sampler.

Names (``--model``):

* any DiT config name (``DiT-XL/2``, ``DiT-S/2``, ...): random weights (the official initialisation)
  at the shape of a 256 px model (32x32 latents, 4 channels, 1000 classes), or ``--ckpt`` weights;
* ``digits``: the embedded digits DiT shipped with the package (``dit_duca.embedded``, 64 tokens);
  ``digits256``: the shipped 256-token digits DiT (16x16 pixels, patch 1);
* ``tiny``: a 2-block random DiT on 8x8 latents for tests and smoke runs;
* ``PixArt-XL/2``: random weights at 256 px (``pixart_duca``), with a synthetic caption.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_duca.embedded_sampling import DEFAULT_CFG_SCALE as DIGITS_DEMO_CFG_SCALE
from dit_duca.models import IMAGENET_CLASSES, LATENT_CHANNELS, XL_INPUT_SIZE
from duca_common.cache import CacheConfig, FeatureCache, TransformerDims
from duca_common.errors import CheckpointError, one_line

# The DiT-XL/2 256 px shape (models.md A.1): 32x32 latents of the SD VAE, 4 channels, 1000 classes
# (dit_duca.models' constants).
DIT_LATENT_SIDE = XL_INPUT_SIZE
DIT_LATENT_CHANNELS = LATENT_CHANNELS
# Reference sampling settings of the DiT table (paper.md section 2): cfg 1.5; PixArt cfg 4.5.
DIT_CFG_SCALE = 1.5
PIXART_CFG_SCALE = 4.5
# The class the reference sample.py draws first (golden retriever); any label works for timing.
DIT_BENCH_LABEL = 207
# Classifier-free guidance of the embedded digits model: the value its demo samples with
# (dit_duca.embedded_sampling.DEFAULT_CFG_SCALE), so the table's uncached row is the demo's quality.
DIGITS_CFG_SCALE = DIGITS_DEMO_CFG_SCALE
# Tiny test model: 2 blocks, width 32, 8x8 inputs with patch 2 (16 tokens), 10 classes.
TINY_KWARGS = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)
# PixArt benchmark caption: T5 tokens the synthetic prompt keeps valid (a typical short COCO caption
# is ~15-25 T5 tokens; the hand formula's cross-attention cost scales with it).
PIXART_BENCH_TEXT_TOKENS = 20
# PixArt benchmark resolution: the reference scripts/inference.py default, 256 px (models.md B.9;
# pixart_duca.cli.DEFAULT_IMAGE_SIZE, not imported: the PixArt stack is optional here).
PIXART_IMAGE_SIZE = 256
# Seed of the synthetic caption's random features (fixed, so every method sees the same caption).
PIXART_CAPTION_SEED = 0

TARGET_HELP = ("a DiT config (DiT-XL/2, DiT-S/2, ...), 'digits' / 'digits256' (embedded models, 64 / 256 tokens), "
               "'tiny', or 'PixArt-XL/2'")
# --cfg-scale left out: each model's own guidance (build_target).
CFG_SCALE_HELP = (f"classifier-free guidance scale, >= 1 (default: {DIT_CFG_SCALE:g} for DiT configs and tiny, "
                  f"{DIGITS_CFG_SCALE:g} for digits / digits256, {PIXART_CFG_SCALE:g} for PixArt-XL/2)")


class TargetError(ValueError):
    """A model name, checkpoint or setting the benchmark cannot use; the message says what to do."""


@dataclass
class Target:
    """A model plus its sampler. ``sample`` returns the final latents (or images) of the cond half."""

    name: str
    family: str                                   # "dit" (presets for DiT) or "pixart"
    model: torch.nn.Module
    latent_shape: tuple[int, int, int]            # (C, H, W) of one sample
    cfg_scale: float
    num_classes: int
    build_meta: Callable[[], torch.nn.Module]     # the same architecture on the meta device
    run_loop: Callable[..., torch.Tensor]         # (model, noise, labels, steps, profile, progress, session)
    is_pixel_model: bool = False                  # samples are images in [-1, 1] (no VAE)
    engine_sessions: bool = True                  # False: sample() runs plain forwards (see without_engine)
    peer_state: dict = field(default_factory=dict)  # what peers build once per target (duca_scripts.diffusers_peers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def cache(self) -> FeatureCache:
        return self.model.feature_cache

    def configure(self, config: CacheConfig, model: torch.nn.Module | None = None) -> None:
        """Use ``config`` for the next sessions of ``model`` (default: the target's model)."""
        (model or self.model).configure_cache(config)      # every model implements duca_common.cache.SupportsCache

    def noise(self, images: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(images, *self.latent_shape, generator=g)
        return z.to(device or self.device)

    def labels(self, images: int, offset: int = 0) -> torch.Tensor:
        if self.num_classes == IMAGENET_CLASSES:
            return torch.full((images,), DIT_BENCH_LABEL, dtype=torch.long)
        return torch.arange(offset, offset + images, dtype=torch.long) % self.num_classes

    def dims(self, images: int, model: torch.nn.Module | None = None) -> TransformerDims:
        m = model or self.model
        if self.family == "pixart":
            cfg = m.config
            side = cfg.input_size // cfg.patch_size
            return TransformerDims(batch=2 * images, tokens=side * side, hidden=cfg.hidden_size, heads=cfg.num_heads,
                                   text_tokens=2 * images * PIXART_BENCH_TEXT_TOKENS)
        h, w = m.grid_size
        return TransformerDims(batch=2 * images, tokens=h * w, hidden=m.hidden_size, heads=m.num_heads)

    def sample(self, noise: torch.Tensor, labels: torch.Tensor, steps: int, *, profile: bool = False,
               progress: bool = False, model: torch.nn.Module | None = None, session: bool = True) -> torch.Tensor:
        """Run the sampler. ``session=False`` runs without the engine's cache session (plain forwards), for
        peers that hook the blocks themselves."""
        return self.run_loop(model or self.model, noise, labels.to(noise.device), steps, profile, progress,
                             session and self.engine_sessions)

    @contextlib.contextmanager
    def without_engine(self) -> Iterator[None]:
        """Inside the block ``sample`` opens no engine session (for peers that hook the blocks themselves)."""
        before, self.engine_sessions = self.engine_sessions, False
        try:
            yield
        finally:
            self.engine_sessions = before

    @contextlib.contextmanager
    def using_model(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside the block ``sample`` runs ``model`` (a stand-in with the same sampling interface, e.g. the
        diffusers copy of a DiT) without engine sessions."""
        before = self.model
        self.model = model
        try:
            with self.without_engine():
                yield
        finally:
            self.model = before


# ------------------------------------------------------------------------------------------------ DiT

@functools.lru_cache(maxsize=16)
def _diffusion(steps: int):
    from dit_duca.diffusion import create_diffusion
    return create_diffusion(str(steps))


def dit_loop(cfg_scale: float) -> Callable[..., torch.Tensor]:
    """The reference DiT sampling: batch [z, z] with labels [y, null], DDIM (eta 0), CFG, one cache session."""

    def run(model, noise: torch.Tensor, labels: torch.Tensor, steps: int, profile: bool, progress: bool,
            session: bool = True) -> torch.Tensor:
        n = noise.shape[0]
        y = torch.cat([labels, torch.full_like(labels, model.num_classes)])
        zz = torch.cat([noise, noise])
        out = _diffusion(steps).ddim_sample_loop(
            model.forward_with_cfg, zz.shape, noise=zz, model_kwargs=dict(y=y, cfg_scale=cfg_scale),
            clip_denoised=False, progress=progress, feature_cache=model.feature_cache if session else None,
            grid=model.grid_size,
            cfg_halves=True, profile=profile)
        return out[:n]

    return run


def _dit_target(name: str, builder: Callable[[], torch.nn.Module], cfg_scale: float, pixel: bool,
                device: torch.device) -> Target:
    with torch.device(device):
        model = builder()
    model.eval().requires_grad_(False)

    def meta() -> torch.nn.Module:
        with torch.device("meta"):
            return builder().eval()

    shape = (model.in_channels, model.input_size, model.input_size)
    return Target(name, "dit", model, shape, cfg_scale, model.num_classes, meta, dit_loop(cfg_scale), pixel)


# Std of the weights given to the zero-initialised layers of the tiny model (adaLN-Zero gates, output
# layer): large enough that blocks change their input and methods give different samples.
TINY_ZERO_INIT_STD = 0.2


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised linears (adaLN-Zero, final layer) random weights.

    With the official initialisation every block is the identity and the output is 0, so every cache
    method would produce the same samples; tests and smoke runs need a model whose blocks do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.is_meta and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * TINY_ZERO_INIT_STD)


def _load_dit_ckpt(model: torch.nn.Module, ckpt: Path) -> None:
    from dit_duca.loading import load_checkpoint, load_into
    load_into(model, load_checkpoint(str(ckpt)), str(ckpt))


def _pixart_target(device: torch.device, cfg_scale: float) -> Target:
    try:
        from duca_common.layers import Caption
        from pixart_duca.model import PixArt, pixart_xl_2
        from pixart_duca.pipeline import sample as pixart_sample
    except ImportError as exc:        # the PixArt stack is optional for the benchmark
        raise TargetError(f"PixArt-XL/2 needs the pixart_duca package ({exc})") from exc
    config = pixart_xl_2(PIXART_IMAGE_SIZE)
    with torch.device(device):
        model = PixArt(config)
    model.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(PIXART_CAPTION_SEED)
    # A synthetic caption: random T5-width features, PIXART_BENCH_TEXT_TOKENS valid tokens per row.
    text = torch.randn(1, PIXART_BENCH_TEXT_TOKENS, config.caption_channels, generator=g)

    def caption(rows: int, dev: torch.device) -> Caption:
        return Caption(text.expand(rows, -1, -1).to(dev), torch.ones(rows, PIXART_BENCH_TEXT_TOKENS, device=dev))

    def run(m, noise, labels, steps, profile, progress, session=True):
        if not session:
            raise TargetError("cache-dit peers are wired for DiT only; PixArt runs the engine's methods")
        ctx = m.feature_cache.profiling() if profile else contextlib.nullcontext()
        with ctx:
            return pixart_sample(m, noise, caption(2 * noise.shape[0], noise.device), steps, cfg_scale)

    def meta() -> torch.nn.Module:
        with torch.device("meta"):
            return PixArt(config).eval()

    shape = (config.in_channels, config.input_size, config.input_size)
    return Target("PixArt-XL/2", "pixart", model, shape, cfg_scale, 1, meta, run)


PIXART_NAMES = ("PixArt-XL/2", "pixart")          # --model values of the PixArt target


def model_family(name: str) -> str:
    """The preset family of --model ``name`` (``methods.parse_methods``' model_family): "pixart" or "dit"."""
    return "pixart" if name in PIXART_NAMES else "dit"


def build_target(name: str, *, device: str | torch.device = "cpu", ckpt: str | None = None,
                 cfg_scale: float | None = None) -> Target:
    """The model named ``name`` on ``device`` (random weights unless it is the embedded model or ``ckpt``)."""
    from dit_duca.models import DiT, DiT_models

    def guidance(default: float) -> float:          # --cfg-scale when given, else the model's own
        return default if cfg_scale is None else cfg_scale

    device = torch.device(device)
    if ckpt is not None and not Path(ckpt).is_file():
        raise TargetError(f"--ckpt {ckpt} does not exist")
    if name in DiT_models:
        def builder() -> torch.nn.Module:
            return DiT_models[name](input_size=DIT_LATENT_SIDE, in_channels=DIT_LATENT_CHANNELS,
                                    num_classes=IMAGENET_CLASSES)
        from dit_duca.loading import load_checkpoint, load_into
        # read before the model is built: an unreadable checkpoint fails in seconds, not after the build
        loaded = load_checkpoint(ckpt) if ckpt is not None else None
        target = _dit_target(name, builder, guidance(DIT_CFG_SCALE), False, device)
        if loaded is not None:
            load_into(target.model, loaded, ckpt)
        return target
    if name == "tiny":
        if ckpt is not None:
            raise TargetError("--model tiny runs random weights and takes no --ckpt; pass --model DiT-XL/2 (or "
                              "another DiT config) with the checkpoint, or drop --ckpt")
        target = _dit_target(name, lambda: DiT(**TINY_KWARGS), guidance(DIT_CFG_SCALE), False, device)
        randomize_zero_init(target.model)
        return target
    from dit_duca.embedded import EMBEDDED_MODELS, read_spec
    if name in EMBEDDED_MODELS:
        path = Path(ckpt) if ckpt is not None else EMBEDDED_MODELS[name]
        if not path.is_file():
            raise TargetError(f"the embedded digits DiT is missing at {path}; train it with "
                              f"`python -m dit_duca.train --export {path}` (docs/embedded.md)")
        flag = "--ckpt " if ckpt is not None else ""
        try:
            spec = read_spec(path)          # CheckpointError (a UsageError) for a file the trainer did not write
        except CheckpointError as exc:
            raise TargetError(f"{flag}{exc}") from None
        target = _dit_target(name, spec.build, guidance(DIGITS_CFG_SCALE), True, device)
        from safetensors.torch import load_file
        try:
            target.model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise TargetError(f"{flag}{path}: the weights do not fit the DiT spec stored in it ({one_line(exc)}); "
                              f"export it again with dit_duca.train --export") from None
        return target
    if name in PIXART_NAMES:
        if ckpt is not None:
            raise TargetError("PixArt benchmarking runs random weights; --ckpt is for DiT models")
        return _pixart_target(device, guidance(PIXART_CFG_SCALE))
    raise TargetError(f"unknown --model {name!r}: {TARGET_HELP}")
