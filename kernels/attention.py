"""ScoreSubnet's tap cross-attention as one function: add the positional term to queries and keys, split
heads from the channel axis, softmax(Q K^T / sqrt(dh)) V, and put the heads back on the channel axis.

Layouts: q, k, v and the output are (B, C, H, W), channel-major as the 1x1 convs around the attention
produce and consume them; channel c belongs to head c // dh, dh = C // heads. k and v may be channel-slice
views of one (B, 2C, H, W) conv output (``kv.chunk(2, dim=1)``). pos is (1, C, H, W), added to q and k
only. On CUDA ``tap_attention`` runs a flash-style Triton kernel (``attention_triton``) that reads
this layout directly; elsewhere the reference. ``backend_for(q, "tap_attention")`` says which.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import backend_for, needs_grad, on_device_of
from .inputs import check_attention_inputs


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, heads, H * W, C / heads); channel c belongs to head c // (C / heads).

    Contiguous on purpose: SDPA's fused kernels need a unit stride in the last dimension; without it SDPA
    falls back to materialising the tokens x tokens matrix per head."""
    B, C = t.shape[:2]
    return t.reshape(B, heads, C // heads, -1).transpose(-1, -2).contiguous()


# Queries per block when attention is exported to ONNX, where SDPA becomes MatMul -> Softmax -> MatMul over the
# whole (B, heads, tokens, tokens) score matrix: blocks of queries keep one block's scores alive at a time (the
# softmax is per query row, so the result is the same). Measured: benchmarks/results/memory/memory.md.
EXPORT_QUERY_BLOCK = 90


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention over the H * W positions of (B, C, H, W) maps with ``heads`` heads on the channel axis; the
    output has q's shape (the U-Net's self-attention, and the reference of ``tap_attention``)."""
    qs, ks, vs = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    if torch.onnx.is_in_onnx_export() and qs.shape[2] > EXPORT_QUERY_BLOCK:
        a = torch.cat([F.scaled_dot_product_attention(block, ks, vs)
                       for block in qs.split(EXPORT_QUERY_BLOCK, dim=2)], dim=2)
    else:
        a = F.scaled_dot_product_attention(qs, ks, vs)
    return a.transpose(-1, -2).reshape(q.shape)


def tap_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                            heads: int) -> torch.Tensor:
    """q, k, v (B, C, H, W), pos (1, C, H, W) -> attention output (B, C, H, W) in q's dtype."""
    return multi_head_attention(q + pos, k + pos, v, heads)


def tap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """Triton on CUDA (fp32/fp16, no autograd), else ``tap_attention_reference``; same signature and layouts."""
    check_attention_inputs(q, k, v, pos, heads)
    if backend_for(q, "tap_attention", needs_grad=needs_grad(q, k, v, pos)) == "triton":
        from .attention_triton import tap_attention_triton

        with on_device_of(q):
            return tap_attention_triton(q, k, v, pos, heads)
    return tap_attention_reference(q, k, v, pos, heads)
