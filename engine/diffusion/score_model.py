"""The score model: a bundle's score network, its EDM denoiser and guidance from the frozen classifier, as
one module ``model(x, sigma[, onehot, gamma]) -> D`` (guided denoiser, fade included).

``score_model(bundle)`` is the one factory: the Engine samples with it, cost accounting counts it, the
benchmarks time it, training fits it and export traces it, so no path evaluates a different score.
- tapdiff (``TapdiffDenoiser``): one classifier forward and one stacked adjoint give the taps the
  ScoreSubnet reads and, when guided, the guidance gradient.
- plug-in networks that see only x_t (the two-model U-Net, the ablation; ``PlugInDenoiser``): the
  network alone, plus a separate classifier forward and one-cotangent adjoint when guided.
- distilled students (``DistilledDenoiser``, ``engine.training.distill``): the label and gamma are inputs
  of the network, so no guidance cotangent is computed: tapdiff's student keeps one classifier forward and a
  one-cotangent adjoint for its taps (on guided taps that one cotangent carries gamma log p(y | x) too), the
  two-model student runs the U-Net alone.
"""
from __future__ import annotations

import torch
from torch import nn

from ..bundle import Bundle
from .denoiser import EDMDenoiser
from ..errors import InvalidInput
from .guidance import apply_guidance
from .taps import TapExtractor


class GuidedDenoiser(nn.Module):
    """D(x; sigma) unguided (``onehot`` None), else D + gamma * w(sigma) * sigma^2 * grad_x log p(y | x).

    ``fade_sigma`` is a constant of the model (baked into exported graphs); gamma is per clip, (B,)."""

    def __init__(self, extractor: TapExtractor, denoiser: EDMDenoiser, fade_sigma: float = 0.0):
        super().__init__()
        self.extractor, self.denoiser, self.fade_sigma = extractor, denoiser, float(fade_sigma)

    @property
    def uses_taps(self) -> bool:
        return self.denoiser.uses_taps

    @property
    def n_classes(self) -> int:
        return self.extractor.n_classes

    def parts(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(D(x; sigma), grad_x log p(y | x) or None)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None,
                gamma: torch.Tensor | None = None) -> torch.Tensor:
        denoised, class_gradient = self.parts(x, sigma, onehot)
        if onehot is None:
            return denoised
        return apply_guidance(denoised, class_gradient, sigma, gamma, self.fade_sigma)


class TapdiffDenoiser(GuidedDenoiser):
    def parts(self, x, sigma, onehot):
        taps = self.extractor(x, sigma, onehot)
        return self.denoiser(x, sigma, taps), taps.class_gradient


class PlugInDenoiser(GuidedDenoiser):
    def parts(self, x, sigma, onehot):
        class_gradient = None if onehot is None else self.extractor.class_gradient(x, sigma, onehot)
        return self.denoiser(x, sigma), class_gradient


class DistilledDenoiser(GuidedDenoiser):
    """A student that has learned its guided teacher: D_student(x; sigma, y, gamma). Unguided (``onehot``
    None) it gets no label and gamma 0. The guidance fade does not apply (guidance is in the weights)."""

    def parts(self, x, sigma, onehot):
        raise TypeError("a distilled student has no separate guidance gradient; call it as model(x, sigma, onehot, gamma)")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None,
                gamma: torch.Tensor | None = None) -> torch.Tensor:
        cond = None if onehot is None else (onehot.to(x), gamma.to(x))
        taps = None
        if self.uses_taps:  # one cotangent: the JEM taps, or with guided taps the guidance steered into them
            steer = self.denoiser.guided_taps and cond is not None
            taps = self.extractor.steered(x, sigma, *cond) if steer else self.extractor(x, sigma)
        return self.denoiser(x, sigma, taps, cond)


def build_score_model(extractor: TapExtractor, net: nn.Module, fade_sigma: float = 0.0) -> GuidedDenoiser:
    """The score model of network ``net`` (trained or not) on ``extractor``'s classifier."""
    denoiser = EDMDenoiser(net, extractor.sde)
    if denoiser.label_classes:
        if denoiser.label_classes != extractor.n_classes:
            raise InvalidInput(f"the student takes {denoiser.label_classes} labels; the classifier has {extractor.n_classes}")
        return DistilledDenoiser(extractor, denoiser, 0.0)
    return (TapdiffDenoiser if denoiser.uses_taps else PlugInDenoiser)(extractor, denoiser, fade_sigma)


def score_model(bundle: Bundle, fade_sigma: float | None = None) -> GuidedDenoiser:
    """The bundle's loaded score network as a guided denoiser, frozen, in eval mode. ``fade_sigma``
    defaults to the bundle's measured choice (config.json "sampling")."""
    if bundle.score_net is None:
        raise InvalidInput(f"{bundle.directory}: no score network loaded (load_bundle(..., model=...))")
    if fade_sigma is None:
        fade_sigma = float(bundle.sampling["guidance_fade_sigma"])
    return build_score_model(TapExtractor(bundle.classifier, bundle.sde), bundle.score_net, fade_sigma).eval()
