"""Per-clip noise: clip k of a request is driven by its own generator, seeded from (seed, k) (EDM's
``StackedRandomGenerator``), and draws everything it will need up front: the prior sample, then each
step's noise. A clip is therefore the same whatever the batch size, chunking or worker that computes it,
up to the last bits where a batched kernel reassociates sums.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidInput


def clip_seed(seed: int, clip: int) -> int:
    """A 63-bit generator seed for clip ``clip`` of a request with ``seed`` (both >= 0), well mixed by
    numpy's SeedSequence so neighbouring (seed, clip) pairs give unrelated streams."""
    if seed < 0 or clip < 0:
        raise InvalidInput(f"seed and clip index must be >= 0, got seed={seed}, clip={clip}")
    return int(np.random.SeedSequence([seed, clip]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class Noise:
    """Every random draw of a batch's run: prior (B, ...) and per step (steps, per_step, B, ...)."""

    prior: torch.Tensor
    steps: torch.Tensor

    def to(self, device) -> "Noise":
        return Noise(self.prior.to(device), self.steps.to(device))


def draw_noise(seeds: Sequence[int], shape: tuple[int, ...], steps: int, per_step: int, device="cpu") -> Noise:
    """Noise for clips with generator ``seeds`` (one per clip, see ``clip_seed``), each of ``shape``."""
    priors, per = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        priors.append(torch.randn(shape, generator=g))
        per.append(torch.randn((steps, per_step, *shape), generator=g))
    return Noise(torch.stack(priors), torch.stack(per, dim=2)).to(device)
