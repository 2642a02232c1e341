"""Per-sample RMS normalisation of the taps: x / sqrt(mean(x^2 over C, H, W) + eps), plus the log-RMS.

Feature and gradient taps have very different, sigma-dependent scales; dividing by the per-sample RMS
puts every tap on a unit scale, and the returned log-RMS keeps the scale as a conditioning signal.
``tap_pair_norm`` does this for a depth's feature and gradient taps at once and writes both into the
concatenated tensor the decoder reads; ``tap_rms_norm`` does it for one tap (the input gradient). On CUDA
both run fused Triton kernels (``tap_norm_triton``: one launch for small taps, two for large ones, log-RMS
written by the kernel); elsewhere the references below. ``backend_for(x, kernel)`` says which.
"""
from __future__ import annotations

import torch

from .dispatch import backend_for, may_overwrite, needs_grad, on_device_of, triton_available  # noqa: F401  (backend_for, triton_available: re-exported)

EPS = 1e-12


def _mean_square(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + eps


def tap_log_rms(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x (B, C, H, W) -> its log RMS (B,) alone (a reduction, nothing of x's size written): the same numbers
    as the reference normalisations' second output."""
    return 0.5 * torch.log(_mean_square(x, eps).flatten())


def tap_rms_norm_reference(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS of shape (B,))."""
    ms = _mean_square(x, eps)
    return x * torch.rsqrt(ms), 0.5 * torch.log(ms.flatten())


def tap_pair_norm_reference(f: torch.Tensor, g: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cf, H, W), (B, Cg, H, W) -> (cat of both normalised (B, Cf + Cg, H, W), log RMS (B, 2)). Without
    autograd or export it normalises the concatenation in place (the same numbers; one tensor of the output's
    size instead of three)."""
    if not may_overwrite(f, g):
        fn, fs = tap_rms_norm_reference(f, eps)
        gn, gs = tap_rms_norm_reference(g, eps)
        return torch.cat([fn, gn], dim=1), torch.stack([fs, gs], dim=1)
    ms_f, ms_g = _mean_square(f, eps), _mean_square(g, eps)
    out = torch.cat([f, g], dim=1)
    out[:, :f.shape[1]].mul_(torch.rsqrt(ms_f))
    out[:, f.shape[1]:].mul_(torch.rsqrt(ms_g))
    return out, torch.stack([0.5 * torch.log(ms_f.flatten()), 0.5 * torch.log(ms_g.flatten())], dim=1)


def tap_rms_norm(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS (B,)), in x's dtype; Triton on CUDA (no autograd), else the reference."""
    if backend_for(x, "tap_rms_norm", needs_grad=needs_grad(x)) == "triton":
        from .tap_norm_triton import tap_rms_norm_triton

        with on_device_of(x):
            return tap_rms_norm_triton(x, eps)
    return tap_rms_norm_reference(x, eps)


def tap_pair_norm(f: torch.Tensor, g: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cf, H, W), (B, Cg, H, W) -> ((B, Cf + Cg, H, W), log RMS (B, 2)); Triton on CUDA (no autograd), else the reference."""
    if backend_for(f, "tap_pair_norm", needs_grad=needs_grad(f, g)) == "triton":
        from .tap_norm_triton import tap_pair_norm_triton

        with on_device_of(f):
            return tap_pair_norm_triton(f, g, eps)
    return tap_pair_norm_reference(f, g, eps)
