"""Token-wise caching on diffusers pipelines, end to end, offline: tiny random DiT and PixArt-alpha pipelines.

    python -m duca_scripts.diffusers_example                       # ~10 s on a CPU, nothing downloaded
    python -m duca_scripts.diffusers_example --steps 50 --dit-preset dit-toca-n3-r93

With real weights the calls are the same (see README, "Token-wise caching on diffusers pipelines"):
``DiTPipeline.from_pretrained("facebook/DiT-XL-2-256")`` instead of :func:`tiny_dit_pipeline`.

For each pipeline it runs the plain call, then every preset of that model family through
``apply_cache``, and prints how far each cached result is from the plain one (max abs difference, relative
to the plain result's range), the fraction of module-token evaluations computed, and the schedule of the
chosen preset; finally ``remove_cache`` and a check that the plain result comes back bit for bit.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)

from dit_duca.models import IMAGENET_CLASSES, LATENT_CHANNELS
from dit_duca.options import VAE_FACTOR
from dit_duca.sample import REFERENCE_CLASS_LABELS
from duca_common.cache import presets_for
from duca_common.cache.adapters.diffusers import apply_cache, cache_of, remove_cache
from duca_common.runtime import HelpFormatter

# Tiny geometry: 8x8 latents (64x64 images through the 8x VAE), 16 tokens of width 32, 4 blocks.
LATENT_SIDE = 8
HEADS, HEAD_DIM, DEPTH = 2, 16, 4
CAPTION_DIM, CAPTION_TOKENS = 16, 12   # stand-in for T5-XXL features (4096 x 120)
# IMAGENET_CLASSES (dit_duca.models): DiTPipeline's null class is the hard-coded label 1000.
# learn_sigma / pred_sigma: DiT and PixArt output eps and the variance value, twice the latent channels
# (models.md A.1, B.10).
OUT_CHANNELS = 2 * LATENT_CHANNELS
# Tiny VAE: four levels like the SD VAE (three 2x downsamplings: VAE_FACTOR 8), 8 channels each, 4 norm groups.
VAE_LEVELS, VAE_WIDTH, VAE_NORM_GROUPS = 4, 8, 4
DIT_LABELS = REFERENCE_CLASS_LABELS[:2]     # the first two labels of upstream DiT sample.py
NOISE_SEED, CAPTION_SEED = 0, 1             # the pipelines' noise generator; the stand-in caption features
DEFAULT_STEPS = 20                          # DDIM steps: the example stays ~10 s on a CPU


def tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(VAE_WIDTH,) * VAE_LEVELS,
                         down_block_types=("DownEncoderBlock2D",) * VAE_LEVELS,
                         up_block_types=("UpDecoderBlock2D",) * VAE_LEVELS, latent_channels=LATENT_CHANNELS,
                         norm_num_groups=VAE_NORM_GROUPS, layers_per_block=1).eval()


def tiny_dit_pipeline(seed: int = 0) -> DiTPipeline:
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                        in_channels=LATENT_CHANNELS, out_channels=OUT_CHANNELS, num_layers=DEPTH,
                                        sample_size=LATENT_SIDE,
                                        num_embeds_ada_norm=IMAGENET_CLASSES).eval()
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(seed), scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(seed: int = 0) -> PixArtAlphaPipeline:
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                           in_channels=LATENT_CHANNELS, out_channels=OUT_CHANNELS, num_layers=DEPTH,
                                           cross_attention_dim=HEADS * HEAD_DIM,
                                           sample_size=LATENT_SIDE, caption_channels=CAPTION_DIM,
                                           use_additional_conditions=False).eval()
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(seed), transformer=transformer,
                               scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_dit(pipe: DiTPipeline, steps: int) -> torch.Tensor:
    return pipe(class_labels=list(DIT_LABELS), num_inference_steps=steps,
                generator=torch.Generator().manual_seed(NOISE_SEED),
                output_type="pt").images


def run_pixart(pipe: PixArtAlphaPipeline, steps: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(CAPTION_SEED)
    embeds = torch.randn(2, CAPTION_TOKENS, CAPTION_DIM, generator=g)    # [negative, prompt]
    mask = torch.ones(2, CAPTION_TOKENS)
    return pipe(prompt=None, negative_prompt=None, prompt_embeds=embeds[1:], prompt_attention_mask=mask[1:],
                negative_prompt_embeds=embeds[:1], negative_prompt_attention_mask=mask[:1], num_inference_steps=steps,
                height=LATENT_SIDE * VAE_FACTOR, width=LATENT_SIDE * VAE_FACTOR,
                generator=torch.Generator().manual_seed(NOISE_SEED),
                output_type="latent", use_resolution_binning=False).images


def compare(name: str, pipe, run, steps: int, family: str, shown: str) -> dict:
    """Plain vs every preset of ``family``; returns {preset: (relative difference, fraction computed)}."""
    plain = run(pipe, steps)
    scale = float(plain.abs().max())
    rows = {}
    print(f"\n{name}: {steps} steps, plain result range {scale:.3g}")
    print(f"{'preset':<26} {'max |cached - plain| / range':>28} {'computed':>9}")
    for preset in presets_for(family):
        apply_cache(pipe, preset=preset.name)
        cached = run(pipe, steps)
        trace = cache_of(pipe).feature_cache.last_trace
        rows[preset.name] = (float((cached - plain).abs().max()) / scale, trace.fraction_computed())
        print(f"{preset.name:<26} {rows[preset.name][0]:>28.4f} {rows[preset.name][1]:>8.0%}")
        if preset.name == shown:
            table = trace.table()
    print(f"\nschedule of {shown} (step:letters per module):\n{table}")
    remove_cache(pipe)
    restored = torch.equal(run(pipe, steps), plain)
    print(f"remove_cache: plain result restored bit for bit: {restored}")
    if not restored:
        raise SystemExit("remove_cache did not restore the plain pipeline")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default {DEFAULT_STEPS})")
    parser.add_argument("--dit-preset", default="dit-duca-n3-r95", help="preset whose schedule is printed for DiT")
    parser.add_argument("--pixart-preset", default="pixart-duca-r25", help="the same for PixArt-alpha")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    for flag, value, family in (("--dit-preset", args.dit_preset, "dit"), ("--pixart-preset", args.pixart_preset,
                                                                           "pixart")):
        names = [p.name for p in presets_for(family)]
        if value not in names:
            parser.error(f"{flag} {value!r} is not a {family} preset; choose one of {', '.join(names)}")
    with torch.no_grad():
        return {"dit": compare("DiTPipeline (tiny, random)", tiny_dit_pipeline(), run_dit, args.steps, "dit",
                               args.dit_preset),
                "pixart": compare("PixArtAlphaPipeline (tiny, random)", tiny_pixart_pipeline(), run_pixart,
                                  args.steps, "pixart", args.pixart_preset)}


if __name__ == "__main__":
    main()
