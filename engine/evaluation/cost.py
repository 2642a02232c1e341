"""Cost of one score evaluation: parameters, MACs (counted on the executed graph), wall time, memory.

MACs are counted by torch's FlopCounterMode over what actually runs (convolutions, transposed
convolutions, matrix products, attention), halved from FLOPs; elementwise work is not counted. Because the
classifier's backward is an explicit adjoint (conv_transpose2d etc.), its MACs are counted like any
forward, which FlopCounterMode cannot do through torch.autograd.grad. Every figure is of the score model
the engine samples with (``engine.diffusion.score_model.score_model``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..diffusion.guidance import conditioned
from ..diffusion.score_model import DistilledDenoiser, GuidedDenoiser, score_model
from ..diffusion.taps import onehot
from ..bundle import Bundle


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
    On CUDA, fn waits for the device, so timing fn times the work."""
    model = model or score_model(bundle)
    x, sigma, oh, gamma = (t.to(device) for t in example_inputs(bundle, batch, guidance))
    fn = conditioned(model, *((oh, gamma) if guidance > 0 else (None, None)))
    if torch.device(device).type == "cuda":
        inner = fn

        def fn(x, sigma):
            out = inner(x, sigma)
            torch.cuda.synchronize()
            return out
    return fn, x, sigma


@torch.no_grad()
def time_score_eval(bundle: Bundle, batch: int, guidance: float, repeats: int = 10, warmup: int = 2) -> dict:
    """Median and spread of the wall time of one score evaluation (the sampler's unit of work), with the
    raw times."""
    fn, x, sigma = score_eval(bundle, batch, guidance)
    for _ in range(warmup):
        fn(x, sigma)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x, sigma)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"batch": batch, "guidance": guidance, "median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2],
            "times_s": times}


_MEMORY_PROBE = r"""
import json, sys, torch
from engine.api import Engine
from engine.evaluation.cost import score_eval

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

ckpt, model, batch, gamma, backend, artifacts = sys.argv[1:7]
engine = Engine(ckpt, model=model, backend=backend, artifacts=artifacts or None)
fn, x, s = score_eval(engine.bundle, int(batch), float(gamma), engine.denoiser)
with torch.no_grad():
    fn(x, s)  # warm-up: allocator pools and lazy initialisation are not the step's
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as cr:
        cr.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS
    for _ in range(3):
        fn(x, s)
peak = status_kb("VmHWM")
sys.stdout.write(json.dumps({"rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                            "step_peak_increase_mb": (peak - before) / 1024}) + "\n")
"""


def peak_step_memory(checkpoint, model: str, batch: int, guidance: float, backend: str = "torch",
                     artifacts=None) -> dict:
    """Peak over the warmed process: the resident-set increase of score evaluations after a warm-up one, in
    a fresh Linux process: after loading and one warm-up evaluation the peak-RSS mark is reset
    (/proc/self/clear_refs), then three evaluations run; the increase of the peak over the resident size
    before them is the figure. What the warm-up made a runtime keep (onnxruntime's arena, torch's pools) is
    NOT in it, so it is not comparable across backends: ``engine.evaluation.memory`` has the figures that
    are (live activations, planned; the process peak over its pre-evaluation state, measured).
    ``backend``: which runtime evaluates."""
    import json
    import os
    import subprocess
    import sys

    # A fixed mmap threshold stops glibc from raising it as large blocks are freed, so every tensor buffer
    # above 128 KiB is mapped and unmapped on its own and the warm-up's buffers do not stay resident.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    args = [str(checkpoint), model, str(batch), str(guidance), backend, str(artifacts or "")]
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
