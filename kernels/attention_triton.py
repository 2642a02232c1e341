"""Flash-style forward attention for ScoreSubnet's tap cross-attention, reading channel-major tensors.

One program per (query block, batch * head). It loads its query tile straight from q's (B, C, H*W)
layout (tokens are the unit-stride axis, so loads coalesce along tokens), adds pos, folds in the
softmax scale, then streams key/value blocks of the same head with an online softmax (running max and
sum, exp2 with log2(e) folded into the scale) and writes its (tokens x dh) output tile back into the
(B, C, H, W) output. No (B, heads, N, dh) copies, no N x N matrix: k and v are read through their
strides, so the channel-slice views of the kv conv output cost nothing.

Masking: tokens past N (query rows and key columns: keys get -inf scores, so they weigh zero) and head
dims past dh (dh is padded to BLOCK_D = max(16, next power of two), e.g. 24 -> 32; padded q/k/v
columns load as zero and are never stored). Accumulation is fp32; the two dots take the input dtype
(fp16 runs on tensor cores; fp32 uses input_precision="ieee", FMA dots, so fp32 results can match the
reference to ~1e-6, as they do under the interpreter, instead of tf32's ~1e-3). A NaN in a query row, a
key or a value entry makes exactly the outputs NaN that the reference makes NaN (tested under the
interpreter).

Verified on CPU only, under TRITON_INTERPRET=1, against ``attention.tap_attention_reference``
(fp32 and fp16); compiled (not run) for sm_90 and sm_80. bf16 is left to the reference (see dispatch).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engine.errors import InvalidInput

from .inputs import check_attention_inputs

LOG2E = 1.4426950408889634

# Launch configuration per dtype, chosen from compile-time metadata only (kernels.aot, sm_90 and sm_80, dh = 16
# and 24; never timed: no GPU was available). fp32 "ieee" dots are FMA loops over register tiles: 64x64 on 4
# warps spills for BLOCK_D = 32 (7.6 KB/thread), 64x64 on 8 warps at one stage fits (104 / 146 registers), and
# 32x32 on 4 warps at one stage fits with the fewest (88 / 142). fp16 64x64 on 8 warps: 102 / 161 registers
# (wgmma on sm_90), where 4 warps needed 161 / 232. Which fits best in time is for a GPU benchmark to say.
LAUNCH = {
    torch.float32: {"block_m": 32, "block_n": 32, "num_warps": 4, "num_stages": 1, "precision": "ieee"},
    torch.float16: {"block_m": 64, "block_n": 64, "num_warps": 8, "num_stages": 2,
                    "precision": "tf32"},  # precision only affects fp32 operands; fp16 dots are fp16 MMAs
}


@triton.jit
def _tap_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_pc, stride_pn,
    stride_ob, stride_oc, stride_on,
    N, HEADS, DH, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    chan = (bh % HEADS) * DH + tl.arange(0, BLOCK_D)  # this head's channels (padded past DH)
    mask_d = tl.arange(0, BLOCK_D) < DH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_md = (offs_m < N)[:, None] & mask_d[None, :]
    dtype = q_ptr.dtype.element_ty

    q = tl.load(q_ptr + b * stride_qb + chan[None, :] * stride_qc + offs_m[:, None] * stride_qn,
                mask=mask_md, other=0.0).to(tl.float32)
    q += tl.load(pos_ptr + chan[None, :] * stride_pc + offs_m[:, None] * stride_pn, mask=mask_md, other=0.0).to(tl.float32)
    q = (q * qk_scale).to(dtype)  # scores come out in log2 units: exp2(s) == exp(q.k / sqrt(dh))

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_dn = mask_d[:, None] & mask_n[None, :]
        # K^T tile (BLOCK_D, BLOCK_N): channel-major storage is already this orientation.
        kt = tl.load(k_ptr + b * stride_kb + chan[:, None] * stride_kc + offs_n[None, :] * stride_kn,
                     mask=mask_dn, other=0.0).to(tl.float32)
        kt += tl.load(pos_ptr + chan[:, None] * stride_pc + offs_n[None, :] * stride_pn, mask=mask_dn,
                      other=0.0).to(tl.float32)
        s = tl.dot(q, kt.to(dtype), input_precision=PRECISION)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * stride_vb + chan[None, :] * stride_vc + offs_n[:, None] * stride_vn,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v.to(dtype), input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_ptr + b * stride_ob + chan[None, :] * stride_oc + offs_m[:, None] * stride_on, out.to(dtype),
             mask=mask_md)


def _token_strides(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(t, batch stride, channel stride, token stride) for t viewed as (B, C, H*W). Views whose H and W do not
    flatten into one token axis (never the case for conv outputs and their channel slices) are copied."""
    _, _, H, W = t.shape
    sb, sc, sh, sw = t.stride()
    if H > 1 and W > 1 and sh != W * sw:
        t = t.contiguous()
        sb, sc, sh, sw = t.stride()
    return t, sb, sc, (sw if W > 1 else sh)


def tap_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int, *,
                         block_m: int | None = None, block_n: int | None = None, num_warps: int | None = None,
                         num_stages: int | None = None) -> torch.Tensor:
    """Same contract as ``tap_attention_reference``: q, k, v (B, C, H, W) (any strides whose H, W flatten,
    e.g. channel slices of one kv tensor), pos (1, C, H, W), fp32 or fp16 -> contiguous (B, C, H, W) output
    in the input dtype. ``block_*``, ``num_warps``, ``num_stages`` override ``LAUNCH`` (tests, benchmarks)."""
    check_attention_inputs(q, k, v, pos, heads)
    if q.dtype not in LAUNCH:
        raise TypeError(f"tap_attention_triton takes float32 or float16, got {q.dtype}")
    cfg = LAUNCH[q.dtype]
    block_m, block_n = block_m or cfg["block_m"], block_n or cfg["block_n"]
    if block_m < 16 or block_n < 16:
        raise InvalidInput("tl.dot needs blocks of at least 16")
    B, C, H, W = q.shape
    N, dh = H * W, C // heads
    q, sqb, sqc, sqn = _token_strides(q)
    k, skb, skc, skn = _token_strides(k)
    v, svb, svc, svn = _token_strides(v)
    pos, _, spc, spn = _token_strides(pos)
    out = torch.empty((B, C, H, W), dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(N, block_m), B * heads)
    _tap_attention_fwd_kernel[grid](
        q, k, v, pos, out,
        sqb, sqc, sqn, skb, skc, skn, svb, svc, svn, spc, spn, C * N, N, 1,
        N, heads, dh, LOG2E / math.sqrt(dh),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(dh)), PRECISION=cfg["precision"],
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"],
    )
    return out
