"""Tap extractor: feature taps, JEM gradient taps and the guidance gradient from one forward and one backward.

The backward carries every cotangent at once, stacked on a leading axis:
  [0] softmax(logits)                -> d logsumexp(logits) / d(activations)   (JEM gradient taps)
  [1] onehot(y) - softmax(logits)    -> d log p(y | x_t) / d x_t                (guidance, when y is given)
A distilled student on guided taps (``steered``) gets one cotangent instead, [0] + gamma [1]: by linearity of
the backward, the JEM taps plus gamma times the guidance gradient at every depth, in one single-cotangent pass.

Labels enter as one-hot float rows (``onehot``): the exported graph then needs no OneHot operator, and
nothing validates label values on the host (which CUDA-graph capture would refuse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.classifier import NoiseConditionedClassifier
from ..stages import stage
from ..storage.config import SDEConfig
from .sde import precondition


@dataclass
class Taps:
    features: list[torch.Tensor]  # per depth (B, C_d, H_d, W_d), full resolution first
    grads: list[torch.Tensor]  # d logsumexp(logits) / d features[d], same shapes
    input_grad: torch.Tensor  # d logsumexp(logits) / d x_t, (B, 1, n_mels, frames)
    class_gradient: torch.Tensor | None  # d log p(y | x_t) / d x_t (what guidance scales), or None without labels
    logits: torch.Tensor  # (B, n_classes)

    def take(self, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth ``depth``'s (feature, gradient) taps, released from this Taps: a reader that takes each depth once
        (ScoreSubnet, as its decoder reaches that depth) lets eager torch free them as it goes. A second take
        of the same depth is an error."""
        f, g = self.features[depth], self.grads[depth]
        if f is None or g is None:
            raise RuntimeError(f"the taps of depth {depth} were already taken from this Taps")
        self.features[depth] = self.grads[depth] = None
        return f, g

    def flat(self) -> tuple[torch.Tensor, ...]:
        """Every tensor in a fixed order (features, grads, input_grad, [class_gradient], logits): the export form."""
        class_gradient = () if self.class_gradient is None else (self.class_gradient,)
        return (*self.features, *self.grads, self.input_grad, *class_gradient, self.logits)


def onehot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B,) integer labels -> (B, n_classes) float one-hot rows. Not F.one_hot: it checks values on the host."""
    return (labels[:, None] == torch.arange(n_classes, device=labels.device)).float()


class TapExtractor(torch.nn.Module):
    """Wraps the frozen classifier. Runs without autograd whatever the grad mode: the backward is the
    classifier's explicit adjoint, so nothing is saved for a backward that never comes."""

    def __init__(self, classifier: NoiseConditionedClassifier, sde: SDEConfig):
        super().__init__()
        self.classifier = classifier
        self.sde = sde

    @property
    def tap_channels(self) -> tuple[int, ...]:
        return self.classifier.tap_channels

    @property
    def n_classes(self) -> int:
        return self.classifier.cfg.n_classes

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None) -> Taps:
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        with stage("classifier forward"):
            fp = self.classifier.forward_with_tape(c_in * x_t, c_noise)
        with stage("classifier adjoint"):
            probs = torch.softmax(fp.logits, dim=-1)
            cot = probs[None] if onehot is None else torch.stack([probs, onehot.to(probs) - probs])
            grads, g_in = self.classifier.adjoint(fp, cot)  # cotangent 0's tap gradients only
        # The classifier sees c_in * x_t, so d/dx_t = c_in * d/d(x_in).
        g_x = g_in * c_in[None]
        return Taps(features=fp.taps, grads=grads, input_grad=g_x[0],
                    class_gradient=g_x[1] if onehot is not None else None, logits=fp.logits)

    @torch.no_grad()
    def steered(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor, gamma: torch.Tensor) -> Taps:
        """Taps whose gradients are d(logsumexp(logits) + gamma log p(y | x_t)) per clip, from one cotangent: the
        JEM taps where gamma is 0 or the row has no label (all-zero ``onehot``). No separate guidance gradient."""
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        with stage("classifier forward"):
            fp = self.classifier.forward_with_tape(c_in * x_t, c_noise)
        with stage("classifier adjoint"):
            probs = torch.softmax(fp.logits, dim=-1)
            labelled = onehot.to(probs).sum(-1, keepdim=True)  # 0 for an unconditional row: no guidance term
            cot = probs + gamma.to(probs)[:, None] * labelled * (onehot.to(probs) - probs)
            grads, g_in = self.classifier.adjoint(fp, cot[None])
        return Taps(features=fp.taps, grads=grads, input_grad=g_in[0] * c_in, class_gradient=None,
                    logits=fp.logits)

    @torch.no_grad()
    def class_gradient(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t) alone (one cotangent, no tap gradients kept): what a two-model pipeline
        needs from its classifier."""
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        with stage("classifier forward"):
            fp = self.classifier.forward_with_tape(c_in * x_t, c_noise)
        with stage("classifier adjoint"):
            probs = torch.softmax(fp.logits, dim=-1)
            _, g_in = self.classifier.adjoint(fp, (onehot.to(probs) - probs)[None], keep_grads=False)
        return g_in[0] * c_in
