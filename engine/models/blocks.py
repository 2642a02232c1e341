"""Building blocks shared by the networks: the noise-level embedding and the FiLM residual block. (The
attention over channel-axis heads is ``kernels.multi_head_attention``, beside its fused kernel.)"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels import per_row, row_linear

from ..errors import InvalidInput


class RowLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) evaluated by ``kernels.rowwise.row_linear``:
    batch-invariant. Every small dense layer of the score path is one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_linear(x, self.weight, self.bias)


def group_count(channels: int) -> int:
    """GroupNorm groups used throughout: 8 where the channels divide, else 1."""
    return 8 if channels % 8 == 0 else 1


class SigmaEmbedding(nn.Module):
    """c_noise = log(sigma) / 4 -> sinusoidal features -> MLP -> (B, dim)."""

    def __init__(self, dim: int, n_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), n_freqs)), persistent=False)
        self.mlp = nn.Sequential(RowLinear(2 * n_freqs, dim), nn.SiLU(), RowLinear(dim, dim), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([per_row(torch.sin, a), per_row(torch.cos, a)], dim=1))


class ConditionEmbedding(nn.Module):
    """A distilled student's extra inputs, the label (one-hot row; all zeros: unconditional) and the guidance
    strength gamma, as a (B, dim) term added to the noise-level embedding. Its last layer starts at zero, so
    a student initialised from its teacher starts as the teacher's unguided network."""

    def __init__(self, n_classes: int, dim: int, n_freqs: int = 8):
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(20.0), n_freqs)), persistent=False)
        self.mlp = nn.Sequential(RowLinear(n_classes + 2 * n_freqs + 1, dim), nn.SiLU(), RowLinear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, onehot: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        g = gamma[:, None] / 4.0
        a = g * self.freqs[None, :]
        return self.mlp(torch.cat([onehot, per_row(torch.sin, a), per_row(torch.cos, a), g], dim=1))


def condition_term(embed: "ConditionEmbedding | None", cond, like: torch.Tensor) -> torch.Tensor | int:
    """What ``embed`` adds to a network's noise embedding ``like`` for ``cond`` = (onehot, gamma) or None (no
    label, gamma 0); 0 for a network without condition inputs."""
    if embed is None:
        return 0
    if cond is None:
        b = like.shape[0]
        cond = (like.new_zeros(b, embed.n_classes), like.new_zeros(b))
    return embed(*cond)


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(group_count(channels), channels)


class FiLMResBlock(nn.Module):
    """skip(h) + conv2(silu(t2)) with t1 = norm1(h), t2 = norm2(conv1(silu(t1))) and the noise-level FiLM
    (1 + scale, shift) applied to t1 (``film_at="input"``: ScoreSubnet, the classifier) or to t2
    (``film_at="hidden"``: the U-Net). conv2 starts at zero, so a new block is the identity.

    ``norm`` builds the normalisations (GroupNorm by default; the classifier passes its ChannelNorm).
    ``forward(..., tape=list)`` records what the classifier's explicit adjoint needs: the norms get the
    tape, and (t1, t2, scale) is appended after them.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, film_at: str = "input",
                 norm: Callable[[int], nn.Module] = _group_norm, zero_film: bool = False):
        super().__init__()
        if film_at not in ("input", "hidden"):
            raise InvalidInput(f"film_at must be 'input' or 'hidden', got {film_at!r}")
        self.film_at = film_at
        self.norm1 = norm(c_in)
        self.film = RowLinear(emb_dim, 2 * (c_in if film_at == "input" else c_out))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        if zero_film:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tape: list | None = None) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        norm_args = () if tape is None else (tape,)
        t1 = self.norm1(h, *norm_args)
        if self.film_at == "input":
            t1 = t1 * (1 + scale) + shift
        t2 = self.norm2(self.conv1(F.silu(t1)), *norm_args)
        if self.film_at == "hidden":
            t2 = t2 * (1 + scale) + shift
        out = self.skip(h) + self.conv2(F.silu(t2))
        if tape is not None:
            tape.append((t1, t2, scale))
        return out
