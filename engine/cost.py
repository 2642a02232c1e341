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
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .bundle import Bundle
from .guidance import PluginScore, TapdiffScore, guided


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


@torch.no_grad()
def step_cost(bundle: Bundle) -> StepCost:
    """Cost of the bundle's loaded score model (``bundle.subnet``): tapdiff when it uses taps (one
    classifier pass feeds both the score and guidance), otherwise a plug-in model whose guidance needs
    its own classifier forward and a one-cotangent adjoint."""
    f = bundle.features
    x = torch.randn(1, 1, f.n_mels, f.frames)
    sigma, y = torch.ones(1), torch.tensor([bundle.labels[0]])
    clf, tx, model = bundle.classifier, bundle.extractor, bundle.subnet
    fwd = count_macs(lambda: clf(x, torch.zeros(1)))
    clf_params, model_params = n_params(clf), n_params(model)
    if model.uses_taps:
        adj1 = count_macs(lambda: tx(x, sigma)) - fwd
        adj2 = count_macs(lambda: tx(x, sigma, y)) - fwd
        taps = tx(x, sigma, y)
        sub = count_macs(lambda: model.denoise(x, sigma, taps))
        parts = {"classifier forward": fwd, "classifier adjoint, 1 cotangent": adj1,
                 "classifier adjoint, 2 stacked cotangents": adj2, "score network": sub}
        return StepCost("tapdiff", fwd + adj1 + sub, fwd + adj2 + sub, parts, clf_params + model_params, model_params)
    own = count_macs(lambda: model.denoise(x, sigma, None))
    guidance = count_macs(lambda: tx.guidance_gradient(x, sigma, y))
    parts = {"score network": own, "classifier forward + 1-cotangent adjoint (guided only)": guidance}
    return StepCost(type(model).__name__, own, own + guidance, parts, clf_params + model_params, model_params)


def _score_fn(bundle: Bundle, batch: int, guidance: float):
    sub, tx = bundle.subnet, bundle.extractor
    labels = torch.tensor([bundle.labels[i % len(bundle.labels)] for i in range(batch)])
    return guided(TapdiffScore(tx, sub) if sub.uses_taps else PluginScore(sub, tx), labels, guidance)


@torch.no_grad()
def time_score_eval(bundle: Bundle, batch: int, guidance: float, repeats: int = 10, warmup: int = 2) -> dict:
    """Median and spread of the wall time of one score evaluation (the sampler's unit of work)."""
    f = bundle.features
    score = _score_fn(bundle, batch, guidance)
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


_MEMORY_PROBE = r"""
import json, sys, torch
from engine.bundle import load_bundle
from engine.cost import _score_fn

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

ckpt, name, batch, gamma = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = load_bundle(ckpt, subnet_name=name)
fn = _score_fn(b, batch, gamma)
f = b.features
x, s = torch.randn(batch, 1, f.n_mels, f.frames), torch.ones(batch)
with torch.no_grad():
    fn(x, s)  # warm-up: allocator pools and lazy initialisation are not the step's
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as cr:
        cr.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS
    for _ in range(3):
        fn(x, s)
peak = status_kb("VmHWM")
print(json.dumps({"rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024, "step_peak_increase_mb": (peak - before) / 1024}))
"""


def peak_step_memory(checkpoint, name: str, batch: int, guidance: float) -> dict:
    """Peak resident memory of score evaluations, measured in a fresh Linux process (CPU has no allocator
    statistics): after loading and one warm-up evaluation the peak-RSS mark is reset (/proc/self/clear_refs),
    then three evaluations run; the increase of the peak over the resident size before them is the step's."""
    import json
    import os
    import subprocess
    import sys

    # A fixed mmap threshold stops glibc from raising it as large blocks are freed, so every tensor buffer
    # above 128 KiB is mapped and unmapped on its own and the warm-up's buffers do not stay resident.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(checkpoint), name, str(batch), str(guidance)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
