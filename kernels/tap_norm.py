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

from .rowwise import per_row

from .dispatch import backend_for, may_overwrite, needs_grad, on_device_of, triton_available  # noqa: F401  (backend_for, triton_available: re-exported)

EPS = 1e-12


def tap_mean_square(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x (B, C, H, W) -> mean(x^2 over C, H, W) + eps, (B, 1, 1, 1): the statistic the normalisations divide by.
    A caller that needs it first (ScoreSubnet's scale embedding) passes it back to them, and the references
    then skip their own reduction (the kernels compute it in registers either way)."""
    return x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + eps


def log_rms(mean_square: torch.Tensor) -> torch.Tensor:
    """``tap_mean_square``'s (B, 1, 1, 1) -> the log RMS (B,), the normalisations' second output."""
    return 0.5 * per_row(torch.log, mean_square.flatten())  # batch-invariant (kernels.rowwise)


def tap_rms_norm_reference(x: torch.Tensor, eps: float = EPS, mean_square: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS of shape (B,)); ``mean_square``: x's, if already known."""
    ms = tap_mean_square(x, eps) if mean_square is None else mean_square
    return x * torch.rsqrt(ms), log_rms(ms)


def tap_pair_norm_reference(f: torch.Tensor, g: torch.Tensor, eps: float = EPS,
                            mean_squares: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cf, H, W), (B, Cg, H, W) -> (cat of both normalised (B, Cf + Cg, H, W), log RMS (B, 2));
    ``mean_squares``: (f's, g's), if already known. Without autograd or export it normalises the
    concatenation in place (the same numbers; one tensor of the output's size instead of three)."""
    ms_f, ms_g = (tap_mean_square(f, eps), tap_mean_square(g, eps)) if mean_squares is None else mean_squares
    if not may_overwrite(f, g):
        fn, fs = tap_rms_norm_reference(f, eps, ms_f)
        gn, gs = tap_rms_norm_reference(g, eps, ms_g)
        return torch.cat([fn, gn], dim=1), torch.stack([fs, gs], dim=1)
    out = torch.cat([f, g], dim=1)
    out[:, :f.shape[1]].mul_(torch.rsqrt(ms_f))
    out[:, f.shape[1]:].mul_(torch.rsqrt(ms_g))
    return out, torch.stack([log_rms(ms_f), log_rms(ms_g)], dim=1)


def tap_rms_norm(x: torch.Tensor, eps: float = EPS, mean_square: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS (B,)), in x's dtype; Triton on CUDA (no autograd), else the
    reference (which uses ``mean_square`` when given)."""
    if backend_for(x, "tap_rms_norm", needs_grad=needs_grad(x)) == "triton":
        from .tap_norm_triton import tap_rms_norm_triton

        with on_device_of(x):
            return tap_rms_norm_triton(x, eps)
    return tap_rms_norm_reference(x, eps, mean_square)


def tap_pair_norm(f: torch.Tensor, g: torch.Tensor, eps: float = EPS,
                  mean_squares: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cf, H, W), (B, Cg, H, W) -> ((B, Cf + Cg, H, W), log RMS (B, 2)); Triton on CUDA (no autograd), else
    the reference (which uses ``mean_squares`` when given)."""
    if backend_for(f, "tap_pair_norm", needs_grad=needs_grad(f, g)) == "triton":
        from .tap_norm_triton import tap_pair_norm_triton

        with on_device_of(f):
            return tap_pair_norm_triton(f, g, eps)
    return tap_pair_norm_reference(f, g, eps, mean_squares)
