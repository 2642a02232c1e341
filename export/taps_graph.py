"""The tap extractor as an exportable graph: inputs (x_t, sigma, onehot labels), outputs every tap.

The classifier's backward is its explicit adjoint, so the exported graph holds the forward and the
stacked-cotangent backward as ordinary operators (Conv, ConvTranspose, Sigmoid, ...).
"""
from __future__ import annotations

import torch

from engine.taps import TapExtractor


class TapsGraph(torch.nn.Module):
    """``guided=False`` builds the unguided variant: one cotangent, and the guidance output is zeros."""

    def __init__(self, extractor: TapExtractor, guided: bool = True):
        super().__init__()
        self.extractor, self.guided = extractor, guided

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor):
        # Labels enter as a one-hot float tensor: the cotangent onehot - softmax needs no OneHot operator.
        from engine.sde import precondition

        clf = self.extractor.classifier
        _, _, c_in, c_noise = precondition(sigma, self.extractor.sde)
        fp = clf.forward_with_tape(c_in * x_t, c_noise)
        probs = torch.softmax(fp.logits, dim=-1)
        grads, g_in = clf.adjoint(fp, torch.stack([probs, onehot - probs]) if self.guided else probs[None])
        g_x = g_in * c_in[None]
        guidance = g_x[1] if self.guided else torch.zeros_like(g_x[0])
        return (*fp.taps, *[g[0] for g in grads], g_x[0], guidance, fp.logits)

    def output_names(self) -> list[str]:
        n = len(self.extractor.tap_channels)
        return [f"feature_{d}" for d in range(n)] + [f"grad_{d}" for d in range(n)] + ["input_grad", "guidance", "logits"]


class ScoreGraph(torch.nn.Module):
    """One score evaluation of tapdiff as an exportable graph: (x_t, sigma, onehot, gamma) -> guided score.

    gamma is an input, so one engine serves guided and unguided sampling (gamma = 0); ``guided=False``
    builds the cheaper unguided graph (one cotangent in the adjoint, gamma ignored)."""

    def __init__(self, extractor: TapExtractor, subnet: torch.nn.Module, guided: bool = True):
        super().__init__()
        self.taps = TapsGraph(extractor, guided)
        self.subnet = subnet

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor, gamma: torch.Tensor):
        from engine.taps import Taps

        out = self.taps(x_t, sigma, onehot)
        n = len(self.taps.extractor.tap_channels)
        taps = Taps(list(out[:n]), list(out[n:2 * n]), out[2 * n], out[2 * n + 1], out[2 * n + 2])
        return self.subnet.score(x_t, sigma, taps) + gamma.reshape(-1, 1, 1, 1) * taps.guidance


class PluginScoreGraph(torch.nn.Module):
    """One score evaluation of a plug-in score model (the two-model U-Net, the x_t-only ablation) with
    guidance from a separate pass of the classifier: (x_t, sigma, onehot, gamma) -> guided score.

    ``guided=False`` leaves the classifier out (onehot and gamma ignored)."""

    def __init__(self, extractor: TapExtractor, model: torch.nn.Module, guided: bool = True):
        super().__init__()
        self.extractor, self.model, self.guided = extractor, model, guided

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor, gamma: torch.Tensor):
        if not self.guided:
            return self.model.score(x_t, sigma, None)
        guidance = self.extractor.guidance_from_onehot(x_t, sigma, onehot)
        return self.model.score(x_t, sigma, None) + gamma.reshape(-1, 1, 1, 1) * guidance


def score_graph(extractor: TapExtractor, model: torch.nn.Module, guided: bool = True) -> torch.nn.Module:
    """The exportable score evaluation of any engine score model, tapdiff's or a plug-in's."""
    return (ScoreGraph if model.uses_taps else PluginScoreGraph)(extractor, model, guided)
