"""Score functions with optional classifier guidance, as wrappers the sampler cannot tell apart.

A ``GuidableScore`` maps (x_t, sigma, labels or None) to (score, grad_x log p(y | x_t) or None);
``guided`` turns one into the plain ``score_fn(x, sigma)`` the samplers take:
score + gamma * w(sigma) * grad_x log p(y | x_t). For tapdiff both terms come from one tap pass.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from .score_subnet import ScoreSubnet
from .taps import TapExtractor


class GuidableScore(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class TapdiffScore(torch.nn.Module):
    """Single backbone: taps and the guidance gradient from one forward/backward of the classifier."""

    def __init__(self, extractor: TapExtractor, subnet: ScoreSubnet):
        super().__init__()
        self.extractor, self.subnet = extractor, subnet

    def forward(self, x, sigma, labels=None):
        taps = self.extractor(x, sigma, labels)
        return self.subnet.score(x, sigma, taps), taps.guidance


class PluginScore(torch.nn.Module):
    """Any score model that sees only x_t (the two-model U-Net, the x_t-only ablation), with guidance
    grad_x log p(y | x_t) from a separate pass of the frozen classifier when guided."""

    def __init__(self, model: torch.nn.Module, extractor: TapExtractor):
        super().__init__()
        self.model, self.extractor = model, extractor

    def forward(self, x, sigma, labels=None):
        s = self.model.score(x, sigma, None)
        return s, (None if labels is None else self.extractor.guidance_gradient(x, sigma, labels))


def guidance_weight(sigma: torch.Tensor, fade_sigma: float) -> torch.Tensor:
    """1 at high noise, fading as sigma^2 / (sigma^2 + fade^2) below ``fade_sigma`` (0 disables the fade)."""
    if fade_sigma <= 0:
        return torch.ones_like(sigma)
    return sigma ** 2 / (sigma ** 2 + fade_sigma ** 2)


def guided(score: GuidableScore, labels: torch.Tensor | None, gamma: float, fade_sigma: float = 0.0
           ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Plain score_fn for the sampler. ``labels=None`` or gamma == 0 gives unguided sampling and skips
    the guidance cotangent altogether."""
    use = labels is not None and gamma > 0

    def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s, g = score(x, sigma, labels if use else None)
        if not use:
            return s
        w = (gamma * guidance_weight(sigma, fade_sigma)).reshape(-1, *([1] * (x.ndim - 1)))
        return s + w * g

    return score_fn
