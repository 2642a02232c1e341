"""The engine's modules as exportable graphs: positional tensor inputs, tensor outputs, nothing rewritten.

- The score model (``engine.diffusion.score_model``), exported as it is: guided, inputs
  (x_t, sigma, onehot, gamma) -> denoised; unguided, (x_t, sigma) -> denoised. The guidance fade is the
  model's constant and is baked in. Labels enter as one-hot float rows: no OneHot operator.
"""
from __future__ import annotations

import torch

from engine.diffusion.score_model import GuidedDenoiser
from engine.diffusion.taps import onehot

SCORE_INPUTS = {True: ["x_t", "sigma", "onehot", "gamma"], False: ["x_t", "sigma"]}
SCORE_OUTPUTS = ["denoised"]


def score_inputs(model: GuidedDenoiser, batch: int, hw: tuple[int, int], guided: bool, seed: int = 0
                 ) -> tuple[torch.Tensor, ...]:
    """Random inputs of the score graph: x_t at a spread of noise levels, labels cycling over the classes,
    gamma spread over [0, 4] (so guided and unguided clips share a batch). Apart from
    ``engine.evaluation.cost.example_inputs`` on purpose: that one is what a cost is measured on (one noise
    level, the bundle's digits, one gamma); these spread sigma and gamma so export's parity check covers them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *hw, generator=g) * 2
    sigma = torch.exp(torch.rand(batch, generator=g) * 6 - 3)  # 0.05 .. 20
    if not guided:
        return x, sigma
    oh = onehot(torch.arange(batch) % model.n_classes, model.n_classes)
    return x, sigma, oh, torch.rand(batch, generator=g) * 4
