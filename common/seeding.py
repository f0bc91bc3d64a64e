"""Per-sample seeds: sample ``index`` of a run with seed ``seed`` gets its own generator.

The seed is derived from the pair (seed, index) by numpy's ``SeedSequence`` (a hash), so runs with
different seeds share no sample noise: with ``seed + index`` (what PixArt did), sample 1 of seed 0 had
the noise of sample 0 of seed 1. The derivation is DiT ``sample_ddp``'s, now used by every sampler;
the images do not depend on batching or on the number of processes.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, index)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
               .astype(np.uint64).dot([1 << 31, 1]))


def sample_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`sample_seed`."""
    return torch.Generator(device).manual_seed(sample_seed(seed, index))
