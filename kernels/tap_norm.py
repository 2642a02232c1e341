"""Per-sample RMS normalisation of a tap: x / sqrt(mean(x^2 over C, H, W) + eps), plus the log-RMS.

Feature and gradient taps have very different, sigma-dependent scales; dividing by the per-sample RMS
puts every tap on a unit scale, and the returned log-RMS keeps the scale as a conditioning signal.
"""
from __future__ import annotations

import torch


def tap_rms_norm_reference(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (normalised x, log RMS of shape (B,))."""
    ms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + eps
    return x * torch.rsqrt(ms), 0.5 * torch.log(ms.flatten())


def tap_rms_norm(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch point for the fused kernel; only the PyTorch reference exists so far."""
    return tap_rms_norm_reference(x, eps)
