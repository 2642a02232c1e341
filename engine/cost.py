"""Cost of one sampling step: parameters, MACs (counted on the executed graph) and wall time.

MACs are counted by torch's FlopCounterMode over what actually runs (convolutions, transposed
convolutions, matrix products, attention), halved from FLOPs; elementwise work is not counted. Because the
classifier's backward is an explicit adjoint (conv_transpose2d etc.), its MACs are counted like any
forward, which FlopCounterMode cannot do through torch.autograd.grad.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .bundle import Bundle
from .guidance import TapdiffScore, guided


def count_macs(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() // 2


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class StepCost:
    classifier_forward_macs: int
    classifier_adjoint_macs_unguided: int  # one cotangent (JEM)
    classifier_adjoint_macs_guided: int  # two stacked cotangents (JEM + guidance)
    subnet_macs: int
    classifier_params: int
    subnet_params: int

    @property
    def unguided_macs(self) -> int:
        return self.classifier_forward_macs + self.classifier_adjoint_macs_unguided + self.subnet_macs

    @property
    def guided_macs(self) -> int:
        return self.classifier_forward_macs + self.classifier_adjoint_macs_guided + self.subnet_macs


@torch.no_grad()
def step_cost(bundle: Bundle) -> StepCost:
    """MACs per score evaluation for one clip (batch 1)."""
    f = bundle.features
    x = torch.randn(1, 1, f.n_mels, f.frames)
    sigma, y = torch.ones(1), torch.tensor([bundle.labels[0]])
    clf, tx = bundle.classifier, bundle.extractor
    fwd = count_macs(lambda: clf(x, torch.zeros(1)))
    unguided = count_macs(lambda: tx(x, sigma)) - fwd
    guided_ = count_macs(lambda: tx(x, sigma, y)) - fwd
    taps = tx(x, sigma, y)
    sub = count_macs(lambda: bundle.subnet.denoise(x, sigma, taps))
    return StepCost(fwd, unguided, guided_, sub, n_params(clf), n_params(bundle.subnet))


@torch.no_grad()
def time_score_eval(bundle: Bundle, batch: int, guidance: float, repeats: int = 10, warmup: int = 2) -> dict:
    """Median and spread of the wall time of one score evaluation (the sampler's unit of work)."""
    f = bundle.features
    score = guided(TapdiffScore(bundle.extractor, bundle.subnet),
                   torch.tensor([bundle.labels[i % len(bundle.labels)] for i in range(batch)]), guidance)
    x, sigma = torch.randn(batch, 1, f.n_mels, f.frames), torch.full((batch,), 1.0)
    for _ in range(warmup):
        score(x, sigma)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score(x, sigma)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"batch": batch, "guidance": guidance, "median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2],
            "repeats": repeats}
