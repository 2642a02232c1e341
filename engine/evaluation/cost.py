"""Cost of one score evaluation: parameters, MACs (counted on the executed graph), wall time, memory.

MACs are counted by torch's FlopCounterMode over what actually runs (convolutions, transposed
convolutions, matrix products, attention), halved from FLOPs; elementwise work is not counted. Because the
classifier's backward is an explicit adjoint (conv_transpose2d etc.), its MACs are counted like any
forward, which FlopCounterMode cannot do through torch.autograd.grad. Every figure is of the score model
the engine samples with (``engine.diffusion.score_model.score_model``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..diffusion.guidance import conditioned
from ..diffusion.score_model import DistilledDenoiser, GuidedDenoiser, score_model
from ..diffusion.taps import onehot
from ..bundle import Bundle
from .timing import quantiles, timed


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# SDPA's fused CPU kernel is missing from FlopCounterMode's table; without this entry attention counts as 0.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_macs(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as fc:
        fn()
    return fc.get_total_flops() // 2


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class StepCost:
    """MACs of one score evaluation for one clip, and parameter counts, of one system."""

    model: str
    unguided_macs: int
    guided_macs: int
    parts: dict  # name -> MACs
    total_params: int
    trainable_params: int


def example_inputs(bundle: Bundle, batch: int, guidance: float, seed: int = 0):
    """(x_t, sigma, onehot, gamma) of a score evaluation at sigma = 1 for ``batch`` clips of the bundle's digits."""
    f, g = bundle.features, torch.Generator().manual_seed(seed)
    labels = torch.tensor([bundle.labels[i % len(bundle.labels)] for i in range(batch)])
    return (torch.randn(batch, 1, f.n_mels, f.frames, generator=g), torch.ones(batch),
            onehot(labels, bundle.classifier.cfg.n_classes), torch.full((batch,), float(guidance)))


@torch.no_grad()
def step_cost(bundle: Bundle, model: GuidedDenoiser | None = None) -> StepCost:
    """MACs of the bundle's score model, guided and unguided, for one clip, and what they are made of:
    for tapdiff one classifier pass feeds both the score and guidance; a plug-in network's guidance needs
    its own classifier forward and one-cotangent adjoint."""
    model = model or score_model(bundle)
    x, sigma, oh, gamma = example_inputs(bundle, 1, 3.0)
    clf, tx = bundle.classifier, model.extractor
    unguided = count_macs(lambda: model(x, sigma))
    guided = count_macs(lambda: model(x, sigma, oh, gamma))
    fwd = count_macs(lambda: clf(x, torch.zeros(1)))
    taps = tx(x, sigma) if model.uses_taps else None
    net = count_macs(lambda: model.denoiser(x, sigma, taps))
    distilled = isinstance(model, DistilledDenoiser)  # guidance is in its weights: no guidance cotangent
    if model.uses_taps:
        parts = {"classifier forward": fwd, "classifier adjoint, 1 cotangent": count_macs(lambda: tx(x, sigma)) - fwd}
        if not distilled:
            parts["classifier adjoint, 2 stacked cotangents"] = count_macs(lambda: tx(x, sigma, oh)) - fwd
        parts["score network"] = net
    else:
        parts = {"score network": net}
        if not distilled:
            parts["classifier forward + 1-cotangent adjoint (guided only)"] = count_macs(lambda: tx.class_gradient(x, sigma, oh))
    own = n_params(model.denoiser)
    # what sampling keeps loaded: the classifier too, except for a two-model student (the U-Net alone)
    total = own if distilled and not model.uses_taps else n_params(clf) + own
    return StepCost(bundle.model, unguided, guided, parts, total, own)


def score_eval(bundle: Bundle, batch: int, guidance: float, model=None, device: str | torch.device = "cpu"):
    """(fn, x, sigma): one score evaluation as the sampler makes it, guided when ``guidance`` > 0; ``model``:
    the score model or any backend's runner of it (default: the eager score model); inputs on ``device``.
    On CUDA, fn returns once its work is queued: time it with ``timing``'s ``device_sync``."""
    model = model or score_model(bundle)
    x, sigma, oh, gamma = (t.to(device) for t in example_inputs(bundle, batch, guidance))
    return conditioned(model, *((oh, gamma) if guidance > 0 else (None, None))), x, sigma


@torch.no_grad()
def time_score_eval(bundle: Bundle, batch: int, guidance: float, repeats: int = 10, warmup: int = 2) -> dict:
    """Wall seconds of one score evaluation (the sampler's unit of work): ``timing.quantiles`` of the rounds,
    with the raw times."""
    fn, x, sigma = score_eval(bundle, batch, guidance)
    times = timed(lambda: fn(x, sigma), repeats, warmup)
    return {"batch": batch, "guidance": guidance, **quantiles(times), "times_s": times}
