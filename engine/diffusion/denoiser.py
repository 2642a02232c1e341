"""EDM preconditioning as one wrapper (Karras et al. 2022, ``EDMPrecond``): any network F becomes the
denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, taps). Every score network (ScoreSubnet, its
ablation, the U-Net) is wrapped by it, in training, sampling and export alike; the samplers see only D,
and the score and the ODE derivative are derived from D here, once.
"""
from __future__ import annotations

import torch
from torch import nn

from ..storage.config import SDEConfig
from .sde import per_sample, precondition


def to_score(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (Tweedie)."""
    return (denoised - x) / per_sample(sigma, x) ** 2


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D) / sigma (k-diffusion's ``to_d``)."""
    return (x - denoised) / per_sample(sigma, x)


class EDMDenoiser(nn.Module):
    """D(x; sigma, taps) of a network F(x_in, c_noise, taps); ``net`` holds the weights (its state dict is the
    bundle's weights file, unprefixed)."""

    def __init__(self, net: nn.Module, sde: SDEConfig):
        super().__init__()
        self.net, self.sde = net, sde

    @property
    def uses_taps(self) -> bool:
        return bool(self.net.uses_taps)

    @property
    def label_classes(self) -> int:
        """> 0 for a distilled student, which also takes (onehot, gamma) (``cond``)."""
        return int(getattr(self.net, "label_classes", 0))

    @property
    def guided_taps(self) -> bool:
        """A student whose taps carry the guidance cotangent (``TapExtractor.steered``)."""
        return bool(getattr(getattr(self.net, "cfg", None), "guided_taps", False))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, taps=None, cond=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sde)
        f = self.net(c_in * x, c_noise, taps) if cond is None else self.net(c_in * x, c_noise, taps, cond)
        return c_skip * x + c_out * f
