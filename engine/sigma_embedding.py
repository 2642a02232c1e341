"""Noise-level embedding shared by the classifier and the score decoders."""
from __future__ import annotations

import math

import torch
from torch import nn


class SigmaEmbedding(nn.Module):
    """c_noise = log(sigma) / 4 -> sinusoidal features -> MLP -> (B, dim)."""

    def __init__(self, dim: int, n_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), n_freqs)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([torch.sin(a), torch.cos(a)], dim=1))
