"""The two-model baseline's score network: a U-Net of the DDPM / NCSN++ family.

Residual blocks with sigma FiLM, stride-2 down-sampling and nearest up-sampling with skip connections,
self-attention at the coarsest resolution, EDM preconditioning like ScoreSubnet, so both train with the
same DSM objective and plug into the same samplers. It sees only x_t: classifier guidance comes from the
separate frozen classifier (``TwoModelScore``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import SDEConfig
from .sde import precondition
from .sigma_embedding import SigmaEmbedding


@dataclass(frozen=True)
class UNetConfig:
    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_level: int = 1
    heads: int = 4
    emb_dim: int = 64


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        u = self.conv1(F.silu(self.norm1(h)))
        u = self.norm2(u) * (1 + scale) + shift
        return self.skip(h) + self.conv2(F.silu(u))


class SelfAttention(nn.Module):
    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        # Contiguous per-head tensors let SDPA use its fused kernel (see engine.score_subnet.TapAttention).
        q, k, v = (t.reshape(B, self.heads, C // self.heads, H * W).transpose(-1, -2).contiguous()
                   for t in self.qkv(self.norm(h)).chunk(3, dim=1))
        a = F.scaled_dot_product_attention(q, k, v)
        return h + self.out(a.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, sde: SDEConfig):
        super().__init__()
        self.cfg, self.sde = cfg, sde
        w = cfg.widths
        self.embed = SigmaEmbedding(cfg.emb_dim)
        self.stem = nn.Conv2d(1, w[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = w[0]
        for i, wi in enumerate(w):
            self.down_blocks.append(nn.ModuleList(ResBlock(c if j == 0 else wi, wi, cfg.emb_dim) for j in range(cfg.blocks_per_level)))
            c = wi
            if i < len(w) - 1:
                self.downsample.append(nn.Conv2d(wi, wi, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, cfg.emb_dim)
        self.attn = SelfAttention(c, cfg.heads)
        self.mid2 = ResBlock(c, c, cfg.emb_dim)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(w))):
            self.up_blocks.append(ResBlock(c + w[i], w[i], cfg.emb_dim))
            c = w[i]
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    uses_taps = False

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, taps=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sde)
        emb = self.embed(c_noise)
        h = self.stem(c_in * x_t)
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
        return c_skip * x_t + c_out * self.out(F.silu(self.out_norm(h)))

    def score(self, x_t: torch.Tensor, sigma: torch.Tensor, taps=None) -> torch.Tensor:
        return (self.denoise(x_t, sigma) - x_t) / sigma.reshape(-1, 1, 1, 1) ** 2
