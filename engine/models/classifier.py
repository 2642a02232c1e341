"""Noise-conditioned classifier p(y | x_t, sigma) over (1, n_mels, frames), with an explicit adjoint.

The network is a chain: a stem conv at full resolution, then stages that halve the resolution (a strided
conv, then residual blocks with sigma FiLM). Each stage's output is a tap. ``forward_with_tape`` keeps
what the backward needs, and ``adjoint`` propagates a stack of S cotangents on d(logits) back through
every layer by hand (conv -> conv_transpose2d with the same weights, SiLU and normalisation by their
analytic derivatives). It is one backward pass for all S cotangents (stacked, except at full resolution,
where it takes them one at a time to keep the step's peak memory down), and it exports to ONNX, which
``torch.autograd.grad`` does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import may_overwrite, row_linear, silu_affine_adjoint, silu_derivative

from ..errors import InvalidInput
from ..storage.config import ClassifierConfig

from .blocks import FiLMResBlock, RowLinear, SigmaEmbedding


def conv_transpose(conv: nn.Conv2d, g: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """Vector-Jacobian product of a bias-free-in-effect conv for one cotangent: g (B, C_out, H', W') -> (B, C_in, H, W)."""
    (s, _), (p, _), (k, _) = conv.stride, conv.padding, conv.kernel_size
    h_out, w_out = g.shape[-2:]
    op = (in_hw[0] - ((h_out - 1) * s - 2 * p + k), in_hw[1] - ((w_out - 1) * s - 2 * p + k))
    return F.conv_transpose2d(g, conv.weight, None, conv.stride, conv.padding, op)


def conv_adjoint(conv: nn.Conv2d, g: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """``conv_transpose`` of a stack of S cotangents as one call: g (S, B, C_out, H', W') -> (S, B, C_in, H, W)."""
    S, B = g.shape[:2]
    out = conv_transpose(conv, g.reshape(S * B, *g.shape[2:]), in_hw)
    return out.reshape(S, B, *out.shape[1:])


class ChannelNorm(nn.Module):
    """Either a per-channel affine (folds into the next conv once frozen; its adjoint is one multiply) or
    GroupNorm (its adjoint needs two reductions per group). Chosen by ClassifierConfig.norm."""

    def __init__(self, channels: int, kind: str, groups: int = 8):
        super().__init__()
        if kind not in ("affine", "groupnorm"):
            raise InvalidInput(f"unknown norm {kind!r}; expected 'affine' or 'groupnorm'")
        self.kind = kind
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, tape: list | None = None) -> torch.Tensor:
        if self.kind == "affine":
            return x * self.weight[:, None, None] + self.bias[:, None, None]
        B, C, H, W = x.shape
        xg = x.reshape(B, self.groups, -1)
        mean = xg.mean(-1, keepdim=True)
        rstd = torch.rsqrt(xg.var(-1, unbiased=False, keepdim=True) + 1e-5)
        xhat = ((xg - mean) * rstd).reshape(B, C, H, W)
        if tape is not None:
            tape.append((xhat, rstd))
        return xhat * self.weight[:, None, None] + self.bias[:, None, None]

    def adjoint(self, g: torch.Tensor, tape: list) -> torch.Tensor:
        g = g * self.weight[:, None, None]
        if self.kind == "affine":
            return g
        xhat, rstd = tape.pop()
        S, B, C, H, W = g.shape
        gg = g.reshape(S, B, self.groups, -1)
        xh = xhat.reshape(1, B, self.groups, -1)
        gx = (gg - gg.mean(-1, keepdim=True) - xh * (gg * xh).mean(-1, keepdim=True)) * rstd[None]
        return gx.reshape(S, B, C, H, W)


class ResBlock(FiLMResBlock):
    """The shared FiLM residual block (FiLM at the input, ChannelNorm, zero-initialised FiLM) plus its
    explicit adjoint, which consumes what ``forward(..., tape)`` recorded."""

    def __init__(self, channels: int, emb_dim: int, norm: str):
        super().__init__(channels, channels, emb_dim, film_at="input", norm=lambda c: ChannelNorm(c, norm),
                         zero_film=True)

    def adjoint(self, g: torch.Tensor, tape: list) -> torch.Tensor:
        t1, t2, scale = tape.pop()
        hw = g.shape[-2:]
        if self.norm1.kind == "affine":  # the elementwise chains are one fused pass each on CUDA
            ga = silu_affine_adjoint(conv_adjoint(self.conv2, g, hw), t2, self.norm2.weight, consume_x=True)
            x = conv_adjoint(self.conv1, ga, hw)
            del ga  # each temporary is given up as soon as it is read: fewer alive at once in eager torch
            return silu_affine_adjoint(x, t1, self.norm1.weight, scale=scale, residual=g, consume_x=True)
        ga = conv_adjoint(self.conv2, g, hw) * silu_derivative(t2)
        gc = conv_adjoint(self.conv1, self.norm2.adjoint(ga, tape), hw) * silu_derivative(t1) * (1 + scale)
        return g + self.norm1.adjoint(gc, tape)


class Stage(nn.Module):
    """silu -> stride-2 conv -> residual blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, emb_dim: int, norm: str):
        super().__init__()
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(ResBlock(c_out, emb_dim, norm) for _ in range(n_blocks))

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tape: list | None = None) -> torch.Tensor:
        if tape is not None:
            tape.append(h)
        h = self.down(F.silu(h))
        for block in self.blocks:
            h = block(h, emb, tape)
        return h

    def adjoint(self, g: torch.Tensor, tape: list) -> torch.Tensor:
        g = self.adjoint_blocks(g, tape)
        h_in = tape.pop()
        return silu_affine_adjoint(conv_adjoint(self.down, g, h_in.shape[-2:]), h_in, None, consume_x=True)

    def adjoint_blocks(self, g: torch.Tensor, tape: list) -> torch.Tensor:
        """The residual blocks' part of ``adjoint``, at this stage's resolution; leaves the stage input on the tape."""
        for block in reversed(self.blocks):
            g = block.adjoint(g, tape)
        return g


@dataclass
class ForwardPass:
    logits: torch.Tensor  # (B, n_classes)
    taps: list[torch.Tensor]  # activations at each depth, full resolution first
    tape: list  # what ``adjoint`` consumes
    input_hw: tuple[int, int]


class NoiseConditionedClassifier(nn.Module):
    """Takes the preconditioned input c_in * x_t and c_noise = log(sigma) / 4."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks) or len(cfg.widths) < 3:
            raise InvalidInput("ClassifierConfig: widths and blocks need equal length >= 3 (three or more tap depths)")
        self.cfg = cfg
        self.embed = SigmaEmbedding(cfg.emb_dim)
        self.stem = nn.Conv2d(1, cfg.widths[0], 3, padding=1)
        self.stages = nn.ModuleList(
            Stage(cfg.widths[i - 1], cfg.widths[i], cfg.blocks[i], cfg.emb_dim, cfg.norm) for i in range(1, len(cfg.widths))
        )
        self.head = RowLinear(cfg.widths[-1], cfg.n_classes)

    @property
    def tap_channels(self) -> tuple[int, ...]:
        return tuple(self.cfg.widths)

    def forward_with_tape(self, x_in: torch.Tensor, c_noise: torch.Tensor, keep_tape: bool = True) -> ForwardPass:
        tape: list | None = [] if keep_tape else None
        emb = self.embed(c_noise)
        h = self.stem(x_in)
        taps = [h]
        for stage in self.stages:
            h = stage(h, emb, tape)
            taps.append(h)
        z = F.silu(h)
        logits = self.head(z.mean(dim=(2, 3)))
        if tape is not None:
            tape.append(h)
        return ForwardPass(logits, taps, tape if tape is not None else [], tuple(x_in.shape[-2:]))

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tape(x_in, c_noise, keep_tape=False).logits

    def adjoint(self, fp: ForwardPass, cotangent: torch.Tensor,
                keep_grads: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """cotangent (S, B, n_classes) on the logits -> (cotangent 0's gradient at each tap (B, C, H, W), the
        gradient at x_in of every cotangent (S, B, 1, H, W)).

        Only cotangent 0's tap gradients are kept (the JEM taps); the others live only as long as their stage
        needs them. The full-resolution step (the first stage's strided-conv adjoint, at 4x the next depth's
        positions) runs one cotangent at a time, cotangent 0 last, on one shared silu'(stem output): that step
        holds the adjoint's largest tensors, and stacked it held all S at once.
        Consumes ``fp.tape`` (each entry is released as soon as it is used); run ``forward_with_tape`` again
        for a second adjoint. ``keep_grads=False`` returns no tap gradients (none outlives its stage): what a
        caller that needs only d/dx_in (guidance) should ask for.
        """
        tape = fp.tape
        S = cotangent.shape[0]
        h_last = tape.pop()
        g = row_linear(cotangent, self.head.weight.t())  # (S, B, classes) -> (S, B, channels)
        g = g[..., None, None] / (h_last.shape[-1] * h_last.shape[-2]) * silu_derivative(h_last)
        del h_last
        grads = []

        def keep(stacked: torch.Tensor) -> None:
            if keep_grads:  # a copy, so cotangent 0's gradient does not hold the whole stack alive
                grads.append(stacked[0] if S == 1 else stacked[0].clone())

        keep(g)
        for stage in reversed(self.stages[1:]):
            g = stage.adjoint(g, tape)
            keep(g)
        first = self.stages[0]
        g = first.adjoint_blocks(g, tape)
        per_cotangent = [g[s] if S == 1 else g[s].clone() for s in range(S)]
        del g
        h0 = tape.pop()
        half = h0.shape[1] // 2  # silu'(h0) by channel halves: its temporaries are at half size
        d0 = torch.cat([silu_derivative(h0[:, :half]), silu_derivative(h0[:, half:])], dim=1)
        g_in = [None] * S
        for s in reversed(range(S)):
            g_s = per_cotangent[s]
            if g_s.device.type == "cpu":  # channels-last in: oneDNN's strided transposed conv then writes its
                # output directly, without a full-resolution temporary and reorder (the same numbers to
                # rounding; a no-op in an exported graph). Elsewhere the layout stays, as the kernels expect.
                g_s = g_s.contiguous(memory_format=torch.channels_last)
            g0 = conv_transpose(first.down, g_s, h0.shape[-2:])
            del g_s
            g0 = g0.mul_(d0) if may_overwrite(g0) else g0 * d0
            per_cotangent[s] = None
            g_in[s] = conv_transpose(self.stem, g0, fp.input_hw)
            if s == 0 and keep_grads:
                grads.append(g0)
            del g0
        grads.reverse()
        return grads, torch.stack(g_in)
