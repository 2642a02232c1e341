"""Per-sample RMS normalisation of the taps: x / sqrt(mean(x^2 over C, H, W) + eps), plus the log-RMS.

Feature and gradient taps have very different, sigma-dependent scales; dividing by the per-sample RMS
puts every tap on a unit scale, and the returned log-RMS keeps the scale as a conditioning signal.
``tap_pair_norm`` does this for a depth's feature and gradient taps at once and writes both into the
concatenated tensor the decoder reads; on CUDA it is two fused Triton kernels (``tap_norm_triton``).
"""
from __future__ import annotations

import functools

import torch

EPS = 1e-12


def tap_rms_norm_reference(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS of shape (B,))."""
    ms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + eps
    return x * torch.rsqrt(ms), 0.5 * torch.log(ms.flatten())


def tap_pair_norm_reference(f: torch.Tensor, g: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cf, H, W), (B, Cg, H, W) -> (cat of both normalised (B, Cf + Cg, H, W), log RMS (B, 2))."""
    fn, fs = tap_rms_norm_reference(f, eps)
    gn, gs = tap_rms_norm_reference(g, eps)
    return torch.cat([fn, gn], dim=1), torch.stack([fs, gs], dim=1)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_for(x: torch.Tensor) -> str:
    """The implementation ``tap_pair_norm`` uses for ``x``: "triton" on CUDA with Triton installed, else
    "torch" (the reference)."""
    return "triton" if x.is_cuda and triton_available() else "torch"


def tap_rms_norm(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    return tap_rms_norm_reference(x, eps)


def tap_pair_norm(f: torch.Tensor, g: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    if backend_for(f) == "triton":
        from .tap_norm_triton import tap_pair_norm_triton

        return tap_pair_norm_triton(f, g, eps)
    return tap_pair_norm_reference(f, g, eps)
