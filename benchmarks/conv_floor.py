"""CLI: what bounds a guided score evaluation's time ratio, tapdiff / two-model, in eager torch: its convolutions.

    python benchmarks/conv_floor.py [--checkpoint engine/checkpoints/fsdd] [--batch 16] [--rounds 15]
        [--threads 1] [--out benchmarks/results/conv_floor.md]

Records every convolution (and transposed convolution: the classifier's explicit adjoint) that one guided
evaluation of each system runs, with its shapes and weights, then replays them alone: in each round, per
system, the whole evaluation once and its recorded convolutions once, on inputs of the recorded shapes,
systems interleaved. The convolutions' share is each system's floor: what an evaluation would take if
everything else (elementwise work, normalisation, attention, copies) were free. The ratio of the floors
bounds the ratio of the evaluations from below as long as the convolutions run at the rates measured here.
MACs are counted from the recorded shapes (one multiply-add per weight per output position).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
import torch.nn.functional as F
from report import emit, header

from engine.bundle import load_bundle
from engine.diffusion.score_model import score_model
from engine.evaluation.cost import score_eval

SYSTEMS = ("tapdiff", "two-model")


@contextlib.contextmanager
def recorded_convolutions(calls: list):
    """Appends (op, input, weight, kwargs) for every F.conv2d / F.conv_transpose2d made while active."""
    conv2d, conv_t = F.conv2d, F.conv_transpose2d

    def rec(name, fn):
        def wrapper(x, weight, bias=None, *args, **kwargs):
            calls.append((name, tuple(x.shape), weight, bias, args, kwargs))
            return fn(x, weight, bias, *args, **kwargs)
        return wrapper

    F.conv2d, F.conv_transpose2d = rec("conv2d", conv2d), rec("conv_transpose2d", conv_t)
    try:
        yield calls
    finally:
        F.conv2d, F.conv_transpose2d = conv2d, conv_t


def conv_macs(op: str, in_shape: tuple, weight: torch.Tensor, out_shape: tuple) -> int:
    """Multiply-adds of one call: each weight once per output position (conv2d) or per input position
    (transposed: weight is (C_in, C_out / groups, kh, kw), each input element spreads over all of it)."""
    positions = out_shape if op == "conv2d" else in_shape
    return positions[0] * positions[2] * positions[3] * math.prod(weight.shape)


def replayer(calls: list):
    """A function running the recorded convolutions alone on fixed random inputs, and their total MACs."""
    ops = {"conv2d": F.conv2d, "conv_transpose2d": F.conv_transpose2d}
    prepared, macs = [], 0
    for op, shape, weight, bias, args, kwargs in calls:
        x = torch.randn(shape)
        out = ops[op](x, weight, bias, *args, **kwargs)
        macs += conv_macs(op, shape, weight, tuple(out.shape))
        prepared.append((ops[op], x, weight, bias, args, kwargs))

    def run():
        for fn, x, weight, bias, args, kwargs in prepared:
            fn(x, weight, bias, *args, **kwargs)
    return run, macs


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.3f} [{q[0]:.3f}, {q[-1]:.3f}]"


@torch.no_grad()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="engine/checkpoints/fsdd")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    top = header(__file__)
    evals, floors, macs, n_calls = {}, {}, {}, {}
    for name in SYSTEMS:
        bundle = load_bundle(args.checkpoint, model=name)
        fn, x, sigma = score_eval(bundle, args.batch, args.guidance, score_model(bundle))
        fn(x, sigma)
        calls = []
        with recorded_convolutions(calls):
            fn(x, sigma)
        evals[name] = lambda fn=fn, x=x, sigma=sigma: fn(x, sigma)
        floors[name], macs[name] = replayer(calls)
        n_calls[name] = len(calls)
    times = {(n, k): [] for n in SYSTEMS for k in ("eval", "conv")}
    for _ in range(args.rounds):
        for name in SYSTEMS:
            for kind, fn in (("eval", evals[name]), ("conv", floors[name])):
                t0 = time.perf_counter()
                fn()
                times[(name, kind)].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    a, b = SYSTEMS
    ratio = {k: [x / y for x, y in zip(times[(a, k)], times[(b, k)])] for k in ("eval", "conv")}
    share = {n: [c / e for c, e in zip(times[(n, "conv")], times[(n, "eval")])] for n in SYSTEMS}
    lines = [top, f"One guided evaluation (guidance {args.guidance:g}), batch {args.batch}, eager torch, "
             f"{args.threads} thread(s); medians of {args.rounds} interleaved rounds, ratios per round, median [p10, p90].", "",
             "| system | convolutions | GMAC (convolutions) | evaluation ms | convolutions alone ms | GMAC/s in them | convolutions' share |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for n in SYSTEMS:
        lines.append(f"| {n} | {n_calls[n]} | {macs[n] / 1e9:.2f} | {ms[(n, 'eval')]:.1f} | {ms[(n, 'conv')]:.1f} | "
                     f"{macs[n] / 1e9 / (ms[(n, 'conv')] / 1e3):.1f} | {spread(share[n])} |")
    lines += ["", f"| {a} / {b} | ratio |", "|---|---|",
              f"| MACs in convolutions | {macs[a] / macs[b]:.3f} |",
              f"| convolutions alone (the floor) | {spread(ratio['conv'])} |",
              f"| whole evaluation | {spread(ratio['eval'])} |", ""]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
