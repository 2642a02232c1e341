"""Tap extractor: feature taps, JEM gradient taps and the guidance gradient from one forward and one backward.

The backward carries every cotangent at once, stacked on a leading axis:
  [0] softmax(logits)                -> d logsumexp(logits) / d(activations)   (JEM gradient taps)
  [1] onehot(y) - softmax(logits)    -> d log p(y | x_t) / d x_t                (guidance, when y is given)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .classifier import NoiseConditionedClassifier
from .config import SDEConfig
from .sde import precondition


@dataclass
class Taps:
    features: list[torch.Tensor]  # per depth (B, C_d, H_d, W_d), full resolution first
    grads: list[torch.Tensor]  # d logsumexp(logits) / d features[d], same shapes
    input_grad: torch.Tensor  # d logsumexp(logits) / d x_t, (B, 1, n_mels, frames)
    guidance: torch.Tensor | None  # d log p(y | x_t) / d x_t, or None when no labels were given
    logits: torch.Tensor  # (B, n_classes)


class TapExtractor(torch.nn.Module):
    """Wraps the frozen classifier; everything runs without autograd (explicit adjoint)."""

    def __init__(self, classifier: NoiseConditionedClassifier, sde: SDEConfig):
        super().__init__()
        self.classifier = classifier
        self.sde = sde

    @property
    def tap_channels(self) -> tuple[int, ...]:
        return self.classifier.tap_channels

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> Taps:
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        fp = self.classifier.forward_with_tape(c_in * x_t, c_noise)
        probs = torch.softmax(fp.logits, dim=-1)
        if labels is None:
            cot = probs[None]
        else:
            # Not F.one_hot: it validates label values on the host, which breaks CUDA-graph capture.
            onehot = (labels[:, None] == torch.arange(probs.shape[-1], device=labels.device)).to(probs)
            cot = torch.stack([probs, onehot - probs])
        logits = fp.logits
        grads, g_in = self.classifier.adjoint(fp, cot)
        # Copies, not views: a view of cotangent 0 would keep the guidance cotangent's half of every
        # stacked gradient alive while the ScoreSubnet runs (its peak-memory phase).
        grads = [g[0].clone() if len(g) > 1 else g[0] for g in grads]
        # The classifier sees c_in * x_t, so d/dx_t = c_in * d/d(x_in).
        g_x = g_in * c_in[None]
        return Taps(
            features=fp.taps,
            grads=grads,
            input_grad=g_x[0],
            guidance=g_x[1] if labels is not None else None,
            logits=logits,
        )

    def guidance_gradient(self, x_t: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t) alone (one cotangent): what a two-model pipeline needs from its classifier."""
        onehot = (labels[:, None] == torch.arange(self.classifier.cfg.n_classes, device=labels.device)).to(x_t)
        return self.guidance_from_onehot(x_t, sigma, onehot)

    def guidance_from_onehot(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """``guidance_gradient`` with the labels as a one-hot float tensor (B, n_classes): the exportable form."""
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        fp = self.classifier.forward_with_tape(c_in * x_t, c_noise)
        probs = torch.softmax(fp.logits, dim=-1)
        _, g_in = self.classifier.adjoint(fp, (onehot - probs)[None], keep_grads=False)
        return g_in[0] * c_in
