"""Shared by the fixture generator (``make_reference_fixtures.py``) and ``tests/test_reference_agreement.py``:
the tiny models' geometry, their seeded random weights, the cases, and the fixture file format.

Nothing here imports the reference code. The weights are a pure function of (seed, parameter names,
shapes), so the generator (which loads them into the reference classes) and the tests (which load them
into ours) build the same tensors from the seed stored in the fixture; a checksum in the fixture
catches any drift of this function.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dit_duca.models import LATENT_CHANNELS as DIT_LATENT_CHANNELS
from dit_duca.models import XL_DEPTH as DIT_XL_DEPTH
from dit_duca.models import XL_PATCH_SIZE as DIT_PATCH_SIZE
from opensora_duca.rflow import NUM_TIMESTEPS as OPENSORA_NUM_TIMESTEPS
from opensora_duca.stdit3 import LATENT_CHANNELS as OPENSORA_LATENT_CHANNELS
from opensora_duca.stdit3 import XL_DEPTH as OPENSORA_XL_DEPTH
from pixart_duca.model import HEAD_DIM as PIXART_HEAD_DIM
from pixart_duca.model import LATENT_CHANNELS as PIXART_LATENT_CHANNELS
from pixart_duca.model import TEXT_TOKENS as PIXART_TEXT_TOKENS
from pixart_duca.model import XL_DEPTH as PIXART_XL_DEPTH

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"

# Action codes of the fixtures: duca_common.cache.plan.Action's values (FULL 0, PARTIAL 1, REUSE 2, SKIP 3).
FULL, PARTIAL, REUSE, SKIP = 0, 1, 2, 3

# Latents must agree to this relative bound (max |ours - ref| / max |ref|), issue 12 item 2.
LATENT_RTOL = 1e-6
# PixArt: one forward of the two implementations differs by ~3e-7 relative (float32 rounding of the
# attention and modulation order), and DPM-Solver++ with random weights amplifies it: the uncached run
# ends 1.2e-6 apart. The bound is float32 noise, two orders below any decision-changing difference
# (a token choice that differs moves these latents by 1e-4 or more).
PIXART_LATENT_RTOL = 2e-6

# seeded_weights' scales: N(0, 1) x 0.5 / sqrt(fan_in) for matrices and convolutions keeps a 28-block trunk
# of random blocks from vanishing or exploding; 0.02 for vectors (biases, tables), the std of DiT's
# normal initialisations (dit_duca.models.EMBED_INIT_STD).
MATRIX_STD_GAIN = 0.5
VECTOR_STD = 0.02


def seeded_weights(model: torch.nn.Module, seed: int, *, skip: tuple[str, ...] = ("pos_embed",),
                   gain: tuple[tuple[str, float], ...] = ()) -> dict:
    """Random weights for ``model``'s state dict: parameter ``i`` (in sorted-name order) is drawn from its
    own generator seeded ``seed + i``, N(0, 1) scaled by 0.5/sqrt(fan_in) for matrices and convolutions
    (so a 28-block trunk neither vanishes nor explodes) and by 0.02 for vectors, times the ``gain`` of the
    first name suffix it ends with. Names in ``skip`` keep the model's own values (fixed position tables)."""
    out = {}
    for i, (name, t) in enumerate(sorted(model.state_dict().items())):
        if any(name.endswith(s) for s in skip) or not t.is_floating_point():
            out[name] = t.clone()
            continue
        g = torch.Generator().manual_seed(seed + i)
        values = torch.randn(t.shape, generator=g, dtype=torch.float32)
        std = MATRIX_STD_GAIN / float(np.prod(t.shape[1:])) ** 0.5 if t.dim() >= 2 else VECTOR_STD
        std *= next((v for suffix, v in gain if name.endswith(suffix)), 1.0)
        out[name] = (values * std).to(t.dtype)
    return out


def checksum(state: dict) -> float:
    """Sum of |w| over all tensors in sorted-name order (float64): detects drift of ``seeded_weights``."""
    return float(sum(state[k].double().abs().sum().item() for k in sorted(state)))


# ------------------------------------------------------------------------------------------------ DiT

@dataclass(frozen=True)
class DiTGeometry:
    """A DiT-XL/2-shaped trunk (28 blocks, patch 2, 4 latent channels so the reference's 3-channel guidance
    applies) that is narrow enough to sample 50 DDIM steps on a CPU in about a second."""

    input_size: int = 32       # 16x16 = 256 tokens as DiT-XL/2 at 256 px (a square grid: the spatial bonus needs one)
    patch_size: int = DIT_PATCH_SIZE
    in_channels: int = DIT_LATENT_CHANNELS
    hidden_size: int = 32
    depth: int = DIT_XL_DEPTH  # the reference hard-codes 28 blocks (cache_init, layer/27, block 27 trunk)
    num_heads: int = 2
    mlp_ratio: float = 2.0
    num_classes: int = 10


@dataclass(frozen=True)
class DiTCase:
    """One reference run. ``method`` is the project's; ``rule`` how the reference's step types are made:
    'reference' (its own cal_type: DuCa), 'toca' (every non-full block conservative) or 'fora' (every
    non-full block reuses attention and MLP, the reference's own 'FORA' block type)."""

    name: str
    preset: str                # the project preset with the same settings
    cache_type: str            # the reference --cache-type
    fresh_ratio: float
    fresh_threshold: int
    rule: str


# Seeds and the label of the fixtures: arbitrary fixed values, stored in each fixture's JSON.
DIT_SEED = 1234                # weights
DIT_NOISE_SEED = 7
DIT_LABEL = 3
DIT_CFG = 1.5                  # DuCa README
# DDIM-25: reaches every schedule feature of DDIM-50 (forced N=2 window, k=0 partial steps) at half the cost
DIT_STEPS = 25
DIT_CASES = (
    # uncached: threshold 1 with fresh_ratio 0 makes every reference block 'full'; kv-norm keeps SDPA
    DiTCase("none", "dit-none", "kv-norm", 0.0, 1, "reference"),
    DiTCase("duca_attention", "dit-duca-readme", "attention", 0.05, 3, "reference"),
    DiTCase("duca_kvnorm", "dit-duca-n3-r95", "kv-norm", 0.05, 3, "reference"),
    DiTCase("toca", "dit-toca-n3-r93", "attention", 0.07, 3, "toca"),
    DiTCase("fora", "dit-fora-n3", "kv-norm", 0.0, 3, "fora"),
)


def dit_noise(geo: DiTGeometry) -> torch.Tensor:
    g = torch.Generator().manual_seed(DIT_NOISE_SEED)
    z = torch.randn(1, geo.in_channels, geo.input_size, geo.input_size, generator=g)
    return torch.cat([z, z], 0)                    # the reference loop's [z, z] with labels [y, null]


def dit_labels(geo: DiTGeometry) -> torch.Tensor:
    return torch.tensor([DIT_LABEL, geo.num_classes])


# ------------------------------------------------------------------------------------------------ PixArt

@dataclass(frozen=True)
class PixArtGeometry:
    """PixArt-alpha XL/2-shaped (28 blocks, head width 72, 120 caption tokens), narrow: one head, tiny
    caption features; 8x8 = 64 tokens (the reference's 4x4-cell spatial bonus needs a side divisible by 4)."""

    input_size: int = 16
    hidden_size: int = PIXART_HEAD_DIM      # one head of the XL width
    depth: int = PIXART_XL_DEPTH
    num_heads: int = 1
    caption_channels: int = 16
    text_tokens: int = PIXART_TEXT_TOKENS
    caption_length: int = 9    # valid tokens of the one prompt (the mask's ones)


@dataclass(frozen=True)
class PixArtCase:
    name: str
    preset: str
    cache_type: str
    fresh_ratio: float
    fresh_threshold: int
    rule: str


PIXART_SEED = 4321
# Cross-attention logits large enough that the attention is peaked, as in trained models: with the plain
# scale it is nearly uniform, every token's entropy rounds to the same float32 value and the selection
# becomes a tie-break between sorting routines instead of a test of the scores.
PIXART_GAIN = (("cross_attn.q_linear.weight", 4.0), ("cross_attn.kv_linear.weight", 4.0))
PIXART_NOISE_SEED = 11
PIXART_CFG = 4.5               # B.7 / the seed's commands
PIXART_STEPS = 20              # DPM-Solver++ (2M), 20 steps
PIXART_CASES = (
    PixArtCase("none", "pixart-none", "kv-norm", 0.0, 1, "reference"),
    PixArtCase("toca", "pixart-toca-r70", "attention", 0.30, 3, "toca"),
    PixArtCase("duca_r25", "pixart-duca-r25", "attention", 0.75, 3, "reference"),       # DuCa README
    PixArtCase("duca_r70", "pixart-duca-r70-script", "attention", 0.30, 3, "reference"),  # inference.py default
)


def pixart_inputs(geo: PixArtGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise (1, 4, s, s), caption features (1, 120, C), mask (1, 120)) for the one prompt."""
    g = torch.Generator().manual_seed(PIXART_NOISE_SEED)
    z = torch.randn(1, PIXART_LATENT_CHANNELS, geo.input_size, geo.input_size, generator=g)
    caption = torch.randn(1, geo.text_tokens, geo.caption_channels, generator=g)
    mask = torch.zeros(1, geo.text_tokens, dtype=torch.long)
    mask[:, :geo.caption_length] = 1
    return z, caption, mask


# ------------------------------------------------------------------------------------------------ OpenSora

@dataclass(frozen=True)
class OpenSoraGeometry:
    """STDiT3-XL/2-shaped (28 spatial + 28 temporal blocks, patch (1, 2, 2), qk-norm, RoPE), narrow; latent
    (T, H, W) = (4, 8, 8): 4 frames x 16 patches = 64 tokens."""

    hidden_size: int = 64
    depth: int = OPENSORA_XL_DEPTH
    num_heads: int = 2
    caption_channels: int = 16
    text_tokens: int = 12
    caption_length: int = 7
    latent: tuple[int, int, int] = (4, 8, 8)
    pixels: int = 64           # height = width in pixels (= input_sq_size: position-table scale 1)
    fps: float = 24.0          # the reference inference fps (models.md C.10)


@dataclass(frozen=True)
class OpenSoraCase:
    """``rule``: 'reference' (its cal_type, the lists_ToCa_CN cycles: DuCa), 'toca' (its own lists_ToCa:
    every 'aggressive' entry becomes 'ToCa') or 'none' (its lists_full: every module full)."""

    name: str
    method: str                # the project's method on top of the 'opensora-duca' preset's cycles
    rule: str


OPENSORA_SEED = 2468
OPENSORA_NOISE_SEED = 5
OPENSORA_CFG = 7.0             # C.10
OPENSORA_STEPS = 12            # three warm-up steps, then one and a half cross-attention cycles of 6
OPENSORA_CACHE = dict(cache_type="kv-norm", ratio_scheduler="ToCa", fresh_ratio=0.1, fresh_threshold=3,
                      force_fresh="global", soft_fresh_weight=0.25)   # hard-coded in its scripts/inference.py
OPENSORA_CASES = (
    OpenSoraCase("none", "none", "none"),
    OpenSoraCase("duca", "duca", "reference"),
    OpenSoraCase("toca", "toca", "toca"),
)


def opensora_inputs(geo: OpenSoraGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise (1, 4, T, H, W), caption features (1, L, C), mask (1, L))."""
    g = torch.Generator().manual_seed(OPENSORA_NOISE_SEED)
    z = torch.randn(1, OPENSORA_LATENT_CHANNELS, *geo.latent, generator=g)
    caption = torch.randn(1, geo.text_tokens, geo.caption_channels, generator=g)
    mask = torch.zeros(1, geo.text_tokens, dtype=torch.long)
    mask[:, :geo.caption_length] = 1
    return z, caption, mask


def opensora_timesteps(steps: int = OPENSORA_STEPS, num_timesteps: int = OPENSORA_NUM_TIMESTEPS) -> list[float]:
    """RFlow's base grid (1 - i/K) * 1000 (no timestep transform: it only reshapes the grid)."""
    return [(1.0 - i / steps) * num_timesteps for i in range(steps)]


# ------------------------------------------------------------------------------------------------ files

def pack_indices(per_event: list[np.ndarray]) -> np.ndarray:
    """Concatenate the recomputed-token index sets (each (rows, k), sorted per row) into one int16 array."""
    if not per_event:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.sort(a, axis=1).reshape(-1) for a in per_event]).astype(np.int16)


def save_fixture(name: str, meta: dict, arrays: dict[str, np.ndarray], directory: Path = FIXTURE_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(directory / f"{name}.npz", **arrays)
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_fixture(name: str, directory: Path = FIXTURE_DIR) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((directory / f"{name}.json").read_text())
    with np.load(directory / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def geometry_dict(geo) -> dict:
    return asdict(geo)
