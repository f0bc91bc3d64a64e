"""The attention each token receives, without the tokens x tokens attention map.

The ``attention_received`` selector statistic (``selectors.py``) is, per sample b and key token j,

    received[b, j] = mean over heads h of  sum over queries i of  softmax_h(q_i . k_j * scale)

i.e. the column sums of the head-mean self-attention map. Forming that map costs
batch x heads x tokens^2 floats (768 MiB for DiT-S at 4096 tokens, batch 2) and forces the attention
output off the fused SDPA/flash kernel. Here the output stays with SDPA and the statistic is computed
in query chunks: for a chunk of query rows the logits ``q_i . k_j * scale`` are formed, their row
log-sum-exp ``lse_i`` (the same normaliser SDPA computes internally), and then

    softmax_ij = exp(q_i . k_j * scale - lse_i)

is summed over the chunk's rows and the heads. Memory is O(chunk x tokens) per (sample, head) and the
extra work is one q.k product (half of an attention's FLOPs). The result equals the explicit softmax's
column sums (``tests/test_attention_score.py`` checks 1e-6).

:func:`sdpa_and_received` is what the models call: on CPU the SDPA kernel itself returns the row
log-sum-exp (``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel ``F.scaled_dot_product_attention``
runs there, same output bit for bit), so each chunk needs one exp instead of a second log-sum-exp pass
(4.0 ms instead of 7.5 ms at 256 tokens, DiT-S shape, one thread). Elsewhere (CUDA, the meta device of
the FLOPs counter) the output comes from ``F.scaled_dot_product_attention`` and each chunk computes its
own log-sum-exp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one chunk's logits (batch x heads x chunk rows x tokens): 2^22 floats = 16 MiB in fp32. At
# DiT-XL/2's 256 tokens (batch 2, 16 heads) one chunk holds every query row, so nothing is split; at 4096
# tokens DiT-S (batch 2, 6 heads) uses 85-row chunks instead of a 768 MiB map.
CHUNK_ELEMENTS = 1 << 22


def query_chunk_rows(batch: int, heads: int, tokens: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Query rows per chunk so that one chunk's logits hold at most ``elements`` values (at least one row)."""
    return max(1, elements // max(1, batch * heads * tokens))


def attention_received(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    chunk: int | None = None,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-mean attention received by every key token, (B, N_k), from q (B, H, N_q, D) and k (B, H, N_k, D).

    ``scale`` defaults to 1/sqrt(D) (SDPA's default); ``chunk`` (query rows per chunk) defaults to
    :func:`query_chunk_rows`; ``lse`` (B, H, N_q) is the row log-sum-exp of the scaled logits when the
    attention kernel already computed it (else each chunk computes its own). Computed in float32 (or
    float64 for float64 inputs) whatever the input dtype.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must be (B, H, N, D) with the same B, H and D; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    if scale is None:
        scale = d**-0.5
    if chunk is None:
        chunk = query_chunk_rows(b, h, n_k)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 query row, got {chunk}")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    kt = k.to(dtype).transpose(-2, -1)  # (B, H, D, N_k)
    received = torch.zeros(b, n_k, dtype=dtype, device=q.device)
    for start in range(0, n_q, chunk):
        logits = (q[:, :, start : start + chunk].to(dtype) * scale) @ kt  # (B, H, c, N_k)
        if lse is None:
            row_lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # row normaliser of the softmax
        else:
            row_lse = lse[:, :, start : start + chunk, None].to(dtype)
        received += logits.sub_(row_lse).exp_().sum(dim=(1, 2))  # in place: one chunk-sized buffer
    return received / h


def _cpu_kernel_with_lse():
    """The CPU flash-attention op that returns (output, logsumexp, ...), or None in builds without it."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def sdpa_and_received(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's output (B, H, N, D) and the head-mean attention each token receives (B, N), no N x N tensor."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    op = _cpu_kernel_with_lse() if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) else None
    if op is not None:
        out, lse = op(q, k, v, scale=scale)[:2]
        return out, attention_received(q, k, scale, chunk, lse=lse)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out, attention_received(q, k, scale, chunk)
