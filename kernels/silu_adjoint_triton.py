"""One-pass Triton kernel for ``out = [residual +] x * silu'(t) * [(1 + scale)] * [weight]`` over stacked
cotangents.

Each program takes BLOCK consecutive elements of t's flat (B, C, H, W) index space, computes the
coefficient silu'(t) * (1 + scale[b, c]) * weight[c] once in fp32 (sigmoid as 1 / (1 + exp(-t)), no
libdevice), then applies it to the same elements of all S cotangents (S is a constexpr, unrolled), so t,
scale and weight are read once however many cotangents are stacked. Replaces 3-5 PyTorch elementwise
kernels, each reading and writing the full (S, B, C, H, W) tensor, by one read of x (and residual) and one
write. The result is rounded to the input dtype once (the reference rounds after every op in fp16).

Verified on CPU only, under TRITON_INTERPRET=1, against
``silu_adjoint.silu_affine_adjoint_reference``; compiled (not run) for sm_90 and sm_80.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InvalidInput

from .inputs import check_adjoint_inputs

LAUNCH = {"block": 1024, "num_warps": 4}  # 8 elements per thread: two 128-bit fp32 accesses per tensor


@triton.jit
def _silu_affine_adjoint_kernel(x_ptr, t_ptr, w_ptr, scale_ptr, res_ptr, out_ptr,
                                n, C, HW, stride_sb, stride_sc,
                                S: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SCALE: tl.constexpr,
                                HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-t))
    coef = sig * (1.0 + t * (1.0 - sig))
    if HAS_SCALE or HAS_WEIGHT:
        c = (offs // HW) % C
        if HAS_SCALE:
            b = offs // (C * HW)
            coef *= 1.0 + tl.load(scale_ptr + b * stride_sb + c * stride_sc, mask=mask, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            coef *= tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
    for s in tl.static_range(S):
        y = tl.load(x_ptr + s * n + offs, mask=mask, other=0.0).to(tl.float32) * coef
        if HAS_RESIDUAL:
            y += tl.load(res_ptr + s * n + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + s * n + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_affine_adjoint_triton(x: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None,
                               scale: torch.Tensor | None = None, residual: torch.Tensor | None = None, *,
                               block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Same contract as ``silu_affine_adjoint_reference``: x (S, B, C, H, W) or (B, C, H, W), t (B, C, H, W),
    weight (C,) or None, scale broadcastable to (B, C, 1, 1) (any strides, e.g. a chunk of the FiLM output)
    or None, residual like x or None -> a new contiguous tensor shaped like x, in x's dtype."""
    check_adjoint_inputs(x, t, weight, scale, residual)
    B, C, H, W = t.shape
    S = x.shape[0] if x.dim() == 5 else 1
    n = t.numel()
    if S * n >= 2**31:
        raise InvalidInput(f"{S} x {n} elements overflow the kernel's 32-bit offsets")
    x, t = x.contiguous(), t.contiguous()  # no-ops for conv_transpose2d outputs and the taped activations
    residual = None if residual is None else residual.contiguous()
    weight = None if weight is None else weight.contiguous()
    if scale is not None:
        scale = scale.expand(B, C, 1, 1)  # strides 0 where scale broadcasts; no copy
    stride_sb, stride_sc = scale.stride()[:2] if scale is not None else (0, 0)
    out = torch.empty_like(x)
    block, num_warps = block or LAUNCH["block"], num_warps or LAUNCH["num_warps"]
    _silu_affine_adjoint_kernel[(triton.cdiv(n, block),)](
        x, t, x if weight is None else weight, x if scale is None else scale, x if residual is None else residual,
        out, n, C, H * W, stride_sb, stride_sc,
        S=S, HAS_WEIGHT=weight is not None, HAS_SCALE=scale is not None, HAS_RESIDUAL=residual is not None,
        BLOCK=block, num_warps=num_warps,
    )
    return out
