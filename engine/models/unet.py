"""The two-model baseline's score network: a U-Net of the DDPM / NCSN++ family.

Residual blocks with sigma FiLM, stride-2 down-sampling and nearest up-sampling with skip connections,
self-attention at the coarsest resolution. Like ScoreSubnet it is the network F inside the EDM denoiser
(``engine.diffusion.denoiser``), so both train with the same DSM objective and plug into the same
samplers. It sees only x_t: classifier guidance comes from a separate pass of the frozen classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import multi_head_attention

from ..stages import stage
from ..storage.config import UNetConfig
from .blocks import ConditionEmbedding, FiLMResBlock, SigmaEmbedding, condition_term, group_count


def _block(c_in: int, c_out: int, emb_dim: int) -> FiLMResBlock:
    """The U-Net's residual block: FiLM after the second normalisation, a 1x1 skip when widths change."""
    return FiLMResBlock(c_in, c_out, emb_dim, film_at="hidden")


class SelfAttention(nn.Module):
    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(group_count(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with stage("attention"):
            q, k, v = self.qkv(self.norm(h)).chunk(3, dim=1)
            return h + self.out(multi_head_attention(q, k, v, self.heads))


class UNet(nn.Module):
    """F(x_in, c_noise): the network inside the EDM denoiser; x_in = c_in * x_t. Takes no taps."""

    uses_taps = False

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.embed = SigmaEmbedding(cfg.emb_dim)
        self.cond_embed = ConditionEmbedding(cfg.label_classes, cfg.emb_dim) if cfg.label_classes else None
        self.stem = nn.Conv2d(1, w[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = w[0]
        for i, wi in enumerate(w):
            self.down_blocks.append(nn.ModuleList(_block(c if j == 0 else wi, wi, cfg.emb_dim) for j in range(cfg.blocks_per_level)))
            c = wi
            if i < len(w) - 1:
                self.downsample.append(nn.Conv2d(wi, wi, 3, stride=2, padding=1))
        self.mid1 = _block(c, c, cfg.emb_dim)
        self.attn = SelfAttention(c, cfg.heads)
        self.mid2 = _block(c, c, cfg.emb_dim)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(w))):
            self.up_blocks.append(_block(c + w[i], w[i], cfg.emb_dim))
            c = w[i]
        self.out_norm = nn.GroupNorm(group_count(c), c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def label_classes(self) -> int:
        return self.cfg.label_classes

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, taps=None, cond=None) -> torch.Tensor:
        """cond: a distilled student's (onehot, gamma), or None (no label, gamma 0)."""
        with stage("decoder"):  # the self-attention inside is its own stage
            return self._forward(x_in, c_noise, cond)

    def _forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond) -> torch.Tensor:
        emb = self.embed(c_noise)
        emb = emb + condition_term(self.cond_embed, cond, emb)
        h = self.stem(x_in)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for block in self.up_blocks:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
