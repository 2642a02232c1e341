"""ScoreSubnet: a small decoder that turns the frozen classifier's taps into a denoiser / score.

Per depth d (coarsest first) the decoder state is upsampled, the RMS-normalised feature and gradient taps
of depth d are projected in, residual blocks run with sigma FiLM, and at the coarse depths the decoder's
positions attend (queries) to the normalised taps of the same depth (keys and values), which lets each
time-frequency position read the whole utterance. The output F is combined by EDM preconditioning:
D(x, sigma) = c_skip x + c_out F, score = (D - x) / sigma^2.

With ``use_taps=False`` (the ablation) the same decoder is fed average-pooled c_in * x_t at every depth
instead of taps, so what the taps are worth can be measured at equal size and budget.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import tap_pair_norm, tap_rms_norm

from .config import SDEConfig, SubnetConfig
from .sde import precondition
from .sigma_embedding import SigmaEmbedding
from .taps import Taps


class DecoderBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
        self.film = nn.Linear(emb_dim, 2 * channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        u = self.conv1(F.silu(self.norm1(h) * (1 + scale) + shift))
        return h + self.conv2(F.silu(self.norm2(u)))


class TapAttention(nn.Module):
    """Cross-attention: queries from the decoder state, keys/values from the normalised taps of its depth."""

    def __init__(self, channels: int, tap_channels: int, heads: int, hw: tuple[int, int]):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(tap_channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.pos = nn.Parameter(torch.zeros(1, channels, *hw))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        q = self.q(self.norm(h)) + self.pos
        k, v = self.kv(taps).chunk(2, dim=1)
        k = k + self.pos

        def heads(t):
            # Contiguous (B, heads, tokens, C / heads): SDPA's fused kernels need a unit stride in the last
            # dimension; without it SDPA falls back to materialising the tokens x tokens matrix per head.
            return t.reshape(B, self.heads, C // self.heads, -1).transpose(-1, -2).contiguous()

        a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return h + self.out(a.transpose(-1, -2).reshape(B, C, H, W))


class ScoreSubnet(nn.Module):
    def __init__(self, cfg: SubnetConfig, sde: SDEConfig, tap_channels: tuple[int, ...], input_hw: tuple[int, int]):
        super().__init__()
        if len(cfg.widths) != len(tap_channels):
            raise ValueError(f"SubnetConfig.widths has {len(cfg.widths)} depths but the classifier has {len(tap_channels)} taps")
        self.cfg, self.sde = cfg, sde
        depths = len(tap_channels)
        hws = [input_hw]
        for _ in range(depths - 1):
            hws.append(((hws[-1][0] + 1) // 2, (hws[-1][1] + 1) // 2))
        self.hws = hws
        # Per depth: feature tap + gradient tap channels (ablation: one pooled x_t channel); the full
        # resolution also gets c_in * x_t and the normalised input gradient.
        in_ch = [2 * c if cfg.use_taps else 1 for c in tap_channels]
        in_ch[0] += 2 if cfg.use_taps else 0
        n_scales = 2 * depths + 1 if cfg.use_taps else 0
        self.embed = SigmaEmbedding(cfg.emb_dim)
        self.scale_embed = nn.Linear(n_scales, cfg.emb_dim) if n_scales else None
        self.proj = nn.ModuleList(nn.Conv2d(in_ch[d], cfg.widths[d], 1) for d in range(depths))
        # 1x1 projection at the coarse resolution, then nearest upsampling: a 3x3 conv here would cost 9x
        # at the fine resolution, and the next block's 3x3 convs mix space anyway.
        self.up = nn.ModuleList(nn.Conv2d(cfg.widths[d + 1], cfg.widths[d], 1) for d in range(depths - 1))
        self.blocks = nn.ModuleList(DecoderBlock(cfg.widths[d], cfg.emb_dim) for d in range(depths))
        self.attn = nn.ModuleDict({
            str(d): TapAttention(cfg.widths[d], in_ch[d], cfg.heads, hws[d]) for d in cfg.attention_depths
        })
        self.post = nn.ModuleDict({str(d): DecoderBlock(cfg.widths[d], cfg.emb_dim) for d in cfg.attention_depths})
        self.out = nn.Conv2d(cfg.widths[0], 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def uses_taps(self) -> bool:
        return self.cfg.use_taps

    def _inputs(self, x_in: torch.Tensor, taps: Taps | None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if not self.cfg.use_taps:
            return [x_in] + [F.adaptive_avg_pool2d(x_in, hw) for hw in self.hws[1:]], None
        per_depth, scales = [], []
        for d, (f, g) in enumerate(zip(taps.features, taps.grads)):
            fg, s = tap_pair_norm(f, g)  # fused on CUDA: normalise both taps into one concatenated tensor
            scales.append(s)
            if d == 0:
                ig, igs = tap_rms_norm(taps.input_grad)
                fg = torch.cat([fg, x_in, ig], dim=1)
                scales.append(igs[:, None])
            per_depth.append(fg)
        return per_depth, torch.cat(scales, dim=1)

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, taps: Taps | None) -> torch.Tensor:
        """EDM denoiser D(x_t, sigma) (B, 1, n_mels, frames)."""
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sde)
        inputs, scales = self._inputs(c_in * x_t, taps)
        emb = self.embed(c_noise)
        if self.scale_embed is not None:
            emb = emb + self.scale_embed(scales / 10.0)
        h = None
        for d in reversed(range(len(inputs))):
            z = self.proj[d](inputs[d])
            if h is not None:
                z = z + F.interpolate(self.up[d](h), size=z.shape[-2:], mode="nearest")
            h = self.blocks[d](z, emb)
            if str(d) in self.attn:
                h = self.post[str(d)](self.attn[str(d)](h, inputs[d]), emb)
        return c_skip * x_t + c_out * self.out(h)

    def score(self, x_t: torch.Tensor, sigma: torch.Tensor, taps: Taps | None) -> torch.Tensor:
        return (self.denoise(x_t, sigma, taps) - x_t) / sigma.reshape(-1, 1, 1, 1) ** 2
