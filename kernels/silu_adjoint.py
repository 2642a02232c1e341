"""The elementwise tail of the classifier's explicit adjoint (ResBlock.adjoint with the "affine" norm):

    out = [residual +] x * silu'(t) * [(1 + scale)] * [weight]      silu'(t) = s (1 + t (1 - s)), s = sigmoid(t)

x: stacked cotangents (S, B, C, H, W) (or (B, C, H, W)); t: the forward pre-activation (B, C, H, W),
broadcast over S; weight: (C,) affine-norm weight or None; scale: FiLM scale broadcastable to
(B, C, 1, 1) or None; residual: like x or None. In ResBlock.adjoint:

    ga  = silu_affine_adjoint(conv_adjoint(conv2, g), t2, norm2.weight)
    out = silu_affine_adjoint(conv_adjoint(conv1, ga), t1, norm1.weight, scale=scale, residual=g)

and Stage.adjoint's ``conv_adjoint(down, g) * silu_derivative(h_in)`` is ``silu_affine_adjoint(.., h_in, None)``
(the first stage's, at full resolution, multiplies one cotangent at a time by a shared silu'(h_in) instead).
On CUDA ``silu_affine_adjoint`` runs one Triton pass (``silu_adjoint_triton``) that reads t once for all
S cotangents; elsewhere the reference. ``backend_for(x, "silu_affine_adjoint")`` says which.
"""
from __future__ import annotations

import torch

from .dispatch import backend_for, may_overwrite, needs_grad, on_device_of
from .inputs import check_adjoint_inputs


def silu_derivative(t: torch.Tensor) -> torch.Tensor:
    """silu'(t) = s (1 + t (1 - s)), s = sigmoid(t). Without autograd or export the steps after the first run in place
    (the same numbers, two temporaries of t's size instead of four)."""
    s = torch.sigmoid(t)
    if not may_overwrite(t):
        return s * (1.0 + t * (1.0 - s))
    return torch.sub(1.0, s).mul_(t).add_(1.0).mul_(s)


def silu_affine_adjoint_reference(x: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None,
                                  scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                                  *, consume_x: bool = False) -> torch.Tensor:
    """The engine's op order, in the input dtype: ((x * silu'(t)) * (1 + scale)) * weight, then residual + .
    Without autograd or export the steps after the first product run in place on it (the same numbers, one tensor of
    x's size instead of up to four), and with ``consume_x`` (x is a temporary its caller gives up) so does the
    first, into x."""
    in_place = may_overwrite(x, t, weight, scale, residual)
    y = x.mul_(silu_derivative(t)) if consume_x and in_place else x * silu_derivative(t)
    if not in_place:
        if scale is not None:
            y = y * (1 + scale)
        if weight is not None:
            y = y * weight[:, None, None]
        return y if residual is None else residual + y
    if scale is not None:
        y.mul_(1 + scale)
    if weight is not None:
        y.mul_(weight[:, None, None])
    return y if residual is None else y.add_(residual)


def silu_affine_adjoint(x: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None,
                        scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                        *, consume_x: bool = False) -> torch.Tensor:
    """Triton on CUDA (no autograd), else ``silu_affine_adjoint_reference``; output has x's shape and dtype.
    ``consume_x``: the caller gives x up, and the reference may write the result into it (the kernel writes a
    new tensor either way)."""
    check_adjoint_inputs(x, t, weight, scale, residual)
    if backend_for(x, "silu_affine_adjoint", needs_grad=needs_grad(x, t, weight, scale, residual)) == "triton":
        from .silu_adjoint_triton import silu_affine_adjoint_triton

        with on_device_of(x):
            return silu_affine_adjoint_triton(x, t, weight, scale, residual)
    return silu_affine_adjoint_reference(x, t, weight, scale, residual, consume_x=consume_x)
