"""The tap extractor as an exportable graph: inputs (x_t, sigma, onehot labels), outputs every tap.

The classifier's backward is its explicit adjoint, so the exported graph holds the forward and the
stacked-cotangent backward as ordinary operators (Conv, ConvTranspose, Sigmoid, ...).
"""
from __future__ import annotations

import torch

from engine.taps import TapExtractor


class TapsGraph(torch.nn.Module):
    def __init__(self, extractor: TapExtractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor):
        # Labels enter as a one-hot float tensor: the cotangent onehot - softmax needs no OneHot operator.
        from engine.sde import precondition

        clf = self.extractor.classifier
        _, _, c_in, c_noise = precondition(sigma, self.extractor.sde)
        fp = clf.forward_with_tape(c_in * x_t, c_noise)
        probs = torch.softmax(fp.logits, dim=-1)
        grads, g_in = clf.adjoint(fp, torch.stack([probs, onehot - probs]))
        g_x = g_in * c_in[None]
        return (*fp.taps, *[g[0] for g in grads], g_x[0], g_x[1], fp.logits)

    def output_names(self) -> list[str]:
        n = len(self.extractor.tap_channels)
        return [f"feature_{d}" for d in range(n)] + [f"grad_{d}" for d in range(n)] + ["input_grad", "guidance", "logits"]


class ScoreGraph(torch.nn.Module):
    """One score evaluation of tapdiff as an exportable graph: (x_t, sigma, onehot, gamma) -> guided score.

    gamma is an input, so one engine serves guided and unguided sampling (gamma = 0)."""

    def __init__(self, extractor: TapExtractor, subnet: torch.nn.Module):
        super().__init__()
        self.taps = TapsGraph(extractor)
        self.subnet = subnet

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor, gamma: torch.Tensor):
        from engine.taps import Taps

        out = self.taps(x_t, sigma, onehot)
        n = len(self.taps.extractor.tap_channels)
        taps = Taps(list(out[:n]), list(out[n:2 * n]), out[2 * n], out[2 * n + 1], out[2 * n + 2])
        return self.subnet.score(x_t, sigma, taps) + gamma.reshape(-1, 1, 1, 1) * taps.guidance
