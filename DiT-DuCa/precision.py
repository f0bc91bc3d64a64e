"""The DiT's compute precision: ``--dtype`` of the DiT samplers (the flag name and ``auto`` of OpenSora's
``inference.py --dtype``).

``auto`` is fp32 on every device: the reference DiT samples in fp32 (with TF32 matmuls on GPU), and the
published FID numbers come from that. ``bf16`` and ``fp16`` cast the model's weights (PixArt runs fp16 on
GPU the same way); the sampler's latents and arithmetic stay fp32, because ``DiT.forward`` casts its input to
the weights' dtype and its output back to the input's (a no-op in fp32, so the fp32 forward is unchanged
bit for bit). The engine caches module outputs in the model's dtype, which halves the cache's memory.
"""

from __future__ import annotations

import torch

from duca_common.errors import UsageError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_HELP = ("DiT weights' dtype: auto = fp32 (the reference's precision), bf16 or fp16 (GPU; bf16 also runs "
              "on CPU); latents and the sampler stay fp32")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype for ``--dtype name`` on ``device``; fp16 on CPU is refused (slow, and the reference never ran it)."""
    if name not in DTYPE_CHOICES:
        raise UsageError(f"--dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
    dtype = torch.float32 if name == "auto" else DTYPES[name]
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise UsageError("--dtype fp16 needs a GPU (CPU kernels for fp16 are slow or missing); use bf16 or fp32 on CPU")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """'fp32' / 'bf16' / 'fp16' (what run records and reports store)."""
    return {v: k for k, v in DTYPES.items()}[dtype]
