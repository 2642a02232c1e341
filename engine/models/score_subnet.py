"""ScoreSubnet: a small decoder that turns the frozen classifier's taps into the EDM network output F.

Per depth d (coarsest first) the decoder state is upsampled, the RMS-normalised feature and gradient taps
of depth d are projected in, residual blocks run with sigma FiLM, and at the coarse depths the decoder's
positions attend (queries) to the normalised taps of the same depth (keys and values), which lets each
time-frequency position read the whole utterance. ``engine.diffusion.denoiser.EDMDenoiser`` turns F into
the denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, taps).

With ``use_taps=False`` (the ablation) the same decoder is fed average-pooled c_in * x_t at every depth
instead of taps, so what the taps are worth can be measured at equal size and budget.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import log_rms, tap_attention, tap_mean_square, tap_pair_norm, tap_rms_norm

from ..errors import InvalidInput
from ..stages import stage
from ..storage.config import SubnetConfig
from .blocks import ConditionEmbedding, FiLMResBlock, RowLinear, SigmaEmbedding, condition_term, group_count


class TapAttention(nn.Module):
    """Cross-attention: queries from the decoder state, keys/values from the normalised taps of its depth, a
    learned positional term on both; the attention itself is ``kernels.tap_attention`` (one fused kernel on
    CUDA, reading the 1x1 convs' channel-major outputs in place)."""

    def __init__(self, channels: int, tap_channels: int, heads: int, hw: tuple[int, int]):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(tap_channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.pos = nn.Parameter(torch.zeros(1, channels, *hw))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        with stage("attention"):
            k, v = self.kv(taps).chunk(2, dim=1)
            return h + self.out(tap_attention(self.q(self.norm(h)), k, v, self.pos, self.heads))


def pyramid(input_hw: tuple[int, int], depths: int) -> list[tuple[int, int]]:
    """(H, W) at each tap depth: the classifier halves (rounding up) at every stage."""
    hws = [tuple(input_hw)]
    for _ in range(depths - 1):
        hws.append(((hws[-1][0] + 1) // 2, (hws[-1][1] + 1) // 2))
    return hws


def _pool_to(x: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Average-pool x from ``in_hw`` to ``out_hw``: a plain average pool where the sizes divide (the same
    numbers as adaptive pooling, and exportable with a dynamic batch), adaptive pooling otherwise."""
    if in_hw[0] % out_hw[0] == 0 and in_hw[1] % out_hw[1] == 0:
        k = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
        return F.avg_pool2d(x, kernel_size=k, stride=k)
    return F.adaptive_avg_pool2d(x, out_hw)


class ScoreSubnet(nn.Module):
    """F(x_in, c_noise, taps): the network inside the EDM denoiser; x_in = c_in * x_t."""

    def __init__(self, cfg: SubnetConfig, tap_channels: tuple[int, ...], input_hw: tuple[int, int]):
        super().__init__()
        if len(cfg.widths) != len(tap_channels):
            raise InvalidInput(f"SubnetConfig.widths has {len(cfg.widths)} depths but the classifier has {len(tap_channels)} taps")
        self.cfg = cfg
        depths = len(tap_channels)
        self.hws = pyramid(input_hw, depths)
        # Per depth: feature tap + gradient tap channels (ablation: one pooled x_t channel); the full
        # resolution also gets c_in * x_t and the normalised input gradient.
        in_ch = [2 * c if cfg.use_taps else 1 for c in tap_channels]
        in_ch[0] += 2 if cfg.use_taps else 0
        n_scales = 2 * depths + 1 if cfg.use_taps else 0
        self.embed = SigmaEmbedding(cfg.emb_dim)
        self.scale_embed = RowLinear(n_scales, cfg.emb_dim) if n_scales else None
        self.cond_embed = ConditionEmbedding(cfg.label_classes, cfg.emb_dim) if cfg.label_classes else None
        self.proj = nn.ModuleList(nn.Conv2d(in_ch[d], cfg.widths[d], 1) for d in range(depths))
        # 1x1 projection at the coarse resolution, then nearest upsampling: a 3x3 conv here would cost 9x
        # at the fine resolution, and the next block's 3x3 convs mix space anyway.
        self.up = nn.ModuleList(nn.Conv2d(cfg.widths[d + 1], cfg.widths[d], 1) for d in range(depths - 1))
        self.blocks = nn.ModuleList(FiLMResBlock(w, w, cfg.emb_dim) for w in cfg.widths)
        self.attn = nn.ModuleDict({
            str(d): TapAttention(cfg.widths[d], in_ch[d], cfg.heads, self.hws[d]) for d in cfg.attention_depths
        })
        self.post = nn.ModuleDict({str(d): FiLMResBlock(cfg.widths[d], cfg.widths[d], cfg.emb_dim)
                                   for d in cfg.attention_depths})
        self.out = nn.Conv2d(cfg.widths[0], 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def uses_taps(self) -> bool:
        return self.cfg.use_taps

    def _tap_statistics(self, taps) -> tuple[list, torch.Tensor | None]:
        """Every tap's mean square (per depth (feature, gradient), then the input gradient's), which each depth's
        normalisation reuses, and their log-RMS scales (B, 2 * depths + 1) in the embedding's order (the input
        gradient's after depth 0's): what the decoder's first block needs before any depth's normalised taps
        exist. The ablation has neither."""
        if not self.cfg.use_taps:
            return [], None
        pairs = [(tap_mean_square(f), tap_mean_square(g)) for f, g in zip(taps.features, taps.grads)]
        input_grad = tap_mean_square(taps.input_grad)
        scales = [log_rms(ms) for ms in pairs[0]] + [log_rms(input_grad)]
        scales += [log_rms(ms) for pair in pairs[1:] for ms in pair]
        return pairs + [input_grad], torch.stack(scales, dim=1)

    def _input(self, d: int, x_in: torch.Tensor, taps, mean_squares: list) -> torch.Tensor:
        """Depth d's decoder input, made when the decoder reaches depth d and dropped after it, so only one
        depth's normalised taps are alive at a time: the RMS-normalised feature and gradient taps (fused on
        CUDA into one concatenated tensor), at full resolution with c_in * x_t and the normalised input
        gradient; the ablation's pooled c_in * x_t. ``mean_squares``: from ``_tap_statistics``."""
        if not self.cfg.use_taps:
            return x_in if d == 0 else _pool_to(x_in, self.hws[0], self.hws[d])
        fg, _ = tap_pair_norm(*taps.take(d), mean_squares=mean_squares[d])
        if d == 0:
            ig, _ = tap_rms_norm(taps.input_grad, mean_square=mean_squares[-1])
            fg = torch.cat([fg, x_in, ig], dim=1)
        return fg

    @property
    def label_classes(self) -> int:
        return self.cfg.label_classes

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, taps=None, cond=None) -> torch.Tensor:
        """x_in = c_in * x_t (B, 1, n_mels, frames), c_noise (B,), taps (``Taps`` or None for the ablation; each
        depth's pair is taken from it as the decoder reaches that depth, so a Taps is read by one forward),
        cond: a distilled student's (onehot, gamma), or None (no label, gamma 0)."""
        with stage("tap normalisation"):
            mean_squares, scales = self._tap_statistics(taps)
        with stage("decoder"):
            emb = self.embed(c_noise)
            emb = emb + condition_term(self.cond_embed, cond, emb)
            if self.scale_embed is not None:
                emb = emb + self.scale_embed(scales / 10.0)
            h = None
            for d in reversed(range(len(self.hws))):
                with stage("tap normalisation"):
                    depth_input = self._input(d, x_in, taps, mean_squares)
                z = self.proj[d](depth_input)
                if str(d) not in self.attn:
                    del depth_input  # read once: freed before the depth's blocks run
                if h is not None:
                    z = z + F.interpolate(self.up[d](h), size=z.shape[-2:], mode="nearest")
                h = self.blocks[d](z, emb)
                del z
                if str(d) in self.attn:
                    h = self.post[str(d)](self.attn[str(d)](h, depth_input), emb)  # attention: its own stage
                    del depth_input
            return self.out(h)
