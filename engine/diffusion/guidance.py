"""Classifier guidance in denoiser form, and the conditioning that turns a guided denoiser into the
plain ``D(x, sigma)`` the solvers take (so a solver never knows whether it is guided).

Score form: s + gamma * w(sigma) * grad_x log p(y | x_t). Since D = x + sigma^2 s, the guided denoiser is
D + gamma * w(sigma) * sigma^2 * grad_x log p(y | x_t).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InvalidInput
from .sde import per_sample

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_GUIDANCE = 3.0  # gamma: the paper's guidance strength, every entry point's default


def guidance_weight(sigma: torch.Tensor, fade_sigma: float) -> torch.Tensor:
    """1 at high noise, fading as sigma^2 / (sigma^2 + fade^2) below ``fade_sigma`` (0 disables the fade)."""
    if fade_sigma <= 0:
        return torch.ones_like(sigma)
    return sigma ** 2 / (sigma ** 2 + fade_sigma ** 2)


def apply_guidance(denoised: torch.Tensor, class_gradient: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor,
                   fade_sigma: float) -> torch.Tensor:
    """D + gamma * w(sigma) * sigma^2 * grad_x log p(y | x_t), with per-sample sigma and gamma of shape (B,)."""
    return denoised + per_sample(gamma * guidance_weight(sigma, fade_sigma) * sigma ** 2, denoised) * class_gradient


def conditioned(model: Callable[..., torch.Tensor], onehot: torch.Tensor | None, gamma: torch.Tensor | None
                ) -> Denoiser:
    """``D(x, sigma)`` for the solvers: ``model(x, sigma, onehot, gamma)`` when guided, ``model(x, sigma)``
    when ``onehot`` is None (unguided: no guidance cotangent is computed at all)."""
    if onehot is None:
        return lambda x, sigma: model(x, sigma)
    if gamma is None or gamma.shape != onehot.shape[:1]:
        raise InvalidInput(f"guided sampling needs one gamma per clip: onehot {tuple(onehot.shape)}, "
                           f"gamma {None if gamma is None else tuple(gamma.shape)}")
    return lambda x, sigma: model(x, sigma, onehot, gamma)
