"""CLI: where a guided score evaluation's time goes, tapdiff against two-model, in eager torch: its convolutions.

    python benchmarks/conv_rates.py [--checkpoint engine/checkpoints/fsdd] [--batch 16] [--rounds 15]
        [--threads 1] [--out benchmarks/results/conv_rates.md]

Records every convolution (and transposed convolution: the classifier's explicit adjoint) that one guided
evaluation of each system runs, with its shapes, input layout and weights, then replays them alone: in each
round, per system, the whole evaluation once and its recorded convolutions once (each timed), on inputs of the
recorded shapes and layouts, systems interleaved. Reported: the convolutions' MACs (one multiply-add per
weight per output position), their time alone and rate per MAC, their share of the evaluation, and the
slowest calls. Replayed alone a convolution's input is cold in cache, so these times are not a strict floor
of the in-model ones; the rates per MAC say which system's convolutions this CPU runs less efficiently.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics

import torch
import torch.nn.functional as F
from report import emit, header

from engine.bundle import load_bundle
from engine.diffusion.score_model import score_model
from engine.evaluation.cost import score_eval
from engine.evaluation.render import spread_cell
from engine.evaluation.timing import quantiles, timed

SYSTEMS = ("tapdiff", "two-model")


@contextlib.contextmanager
def recorded_convolutions(calls: list):
    """Appends (op, input shape, input layout, weight, bias, args, kwargs) for every F.conv2d / F.conv_transpose2d
    made while active (the layout matters: oneDNN's strided transposed conv is several times faster on a
    channels-last input)."""
    conv2d, conv_t = F.conv2d, F.conv_transpose2d

    def rec(name, fn):
        def wrapper(x, weight, bias=None, *args, **kwargs):
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and \
                not x.is_contiguous() else torch.contiguous_format
            calls.append((name, tuple(x.shape), layout, weight, bias, args, kwargs))
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
    """(run, per-call MACs, per-call labels): run() replays the recorded convolutions alone on fixed random
    inputs and returns each call's seconds."""
    ops = {"conv2d": F.conv2d, "conv_transpose2d": F.conv_transpose2d}
    prepared, macs, labels = [], [], []
    for op, shape, layout, weight, bias, args, kwargs in calls:
        x = torch.randn(shape).contiguous(memory_format=layout)
        out = ops[op](x, weight, bias, *args, **kwargs)
        macs.append(conv_macs(op, shape, weight, tuple(out.shape)))
        stride = args[0] if args else kwargs.get("stride", 1)
        labels.append(f"{op} {'x'.join(map(str, shape))} -> {'x'.join(map(str, out.shape))}, "
                      f"{weight.shape[-2]}x{weight.shape[-1]}, stride {stride}"
                      f"{', channels-last in' if layout is torch.channels_last else ''}")
        prepared.append((ops[op], x, weight, bias, args, kwargs))

    def run() -> list[float]:  # one round: each call timed once, in the recorded order
        return [timed(lambda c=c: c[0](c[1], c[2], c[3], *c[4], **c[5]), repeats=1, warmup=0)[0] for c in prepared]
    return run, macs, labels


def spread(values: list[float]) -> str:
    return spread_cell(quantiles(values), spec=".3f")


@torch.no_grad()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="engine/checkpoints/fsdd")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8, help="slowest convolution shapes listed per system")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    top = header(__file__)
    evals, replays, macs, labels = {}, {}, {}, {}
    for name in SYSTEMS:
        bundle = load_bundle(args.checkpoint, model=name)
        fn, x, sigma = score_eval(bundle, args.batch, args.guidance, score_model(bundle))
        fn(x, sigma)
        calls = []
        with recorded_convolutions(calls):
            fn(x, sigma)
        evals[name] = lambda fn=fn, x=x, sigma=sigma: fn(x, sigma)
        replays[name], macs[name], labels[name] = replayer(calls)
    times = {(n, k): [] for n in SYSTEMS for k in ("eval", "conv")}
    per_call = {n: [] for n in SYSTEMS}
    for _ in range(args.rounds):
        for name in SYSTEMS:
            times[(name, "eval")] += timed(evals[name], repeats=1, warmup=0)
            seconds = replays[name]()
            times[(name, "conv")].append(sum(seconds))
            per_call[name].append(seconds)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    a, b = SYSTEMS
    ratio = {k: [x / y for x, y in zip(times[(a, k)], times[(b, k)])] for k in ("eval", "conv")}
    share = {n: [c / e for c, e in zip(times[(n, "conv")], times[(n, "eval")])] for n in SYSTEMS}
    gmac = {n: sum(macs[n]) / 1e9 for n in SYSTEMS}
    lines = [top, f"One guided evaluation (guidance {args.guidance:g}), batch {args.batch}, eager torch, "
             f"{args.threads} thread(s); medians of {args.rounds} interleaved rounds, ratios per round, median [p10, p90]. "
             "Convolutions replayed alone (inputs cold in cache: not a strict floor of their in-model time).", "",
             "| system | convolutions | GMAC in them | evaluation ms | convolutions alone ms | GMAC/s in them | their share of the evaluation |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for n in SYSTEMS:
        lines.append(f"| {n} | {len(macs[n])} | {gmac[n]:.2f} | {ms[(n, 'eval')]:.1f} | {ms[(n, 'conv')]:.1f} | "
                     f"{gmac[n] / (ms[(n, 'conv')] / 1e3):.1f} | {spread(share[n])} |")
    lines += ["", f"| {a} / {b} | ratio |", "|---|---|",
              f"| MACs in convolutions | {gmac[a] / gmac[b]:.3f} |",
              f"| convolutions alone | {spread(ratio['conv'])} |",
              f"| whole evaluation | {spread(ratio['eval'])} |", ""]
    for n in SYSTEMS:
        grouped: dict[str, list] = {}
        for k, label in enumerate(labels[n]):
            g = grouped.setdefault(label, [0, 0.0, 0])
            g[0] += 1
            g[1] += statistics.median(r[k] for r in per_call[n]) * 1e3
            g[2] += macs[n][k]
        lines += [f"{n}: the slowest convolutions (summed over calls of the same shape)", "",
                  "| convolution | calls | ms | GMAC/s |", "|---|---:|---:|---:|"]
        for label, (count, t_ms, m) in sorted(grouped.items(), key=lambda kv: -kv[1][1])[:args.top]:
            lines.append(f"| {label} | {count} | {t_ms:.1f} | {m / 1e9 / (t_ms / 1e3):.1f} |")
        lines.append("")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
