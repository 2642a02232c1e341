"""CLI: cost of the classifier's normalisation choice on the sampling hot path, side by side.

    python benchmarks/norm_cost.py [--batch 16] [--repeats 10] [--out benchmarks/results/norm_cost.md]

Per-channel affine (folds into the neighbouring conv once frozen; its adjoint is one multiply) against
GroupNorm (two reductions per group forward and backward), same widths: median wall time of the forward
and of the explicit adjoint with two stacked cotangents, and their MACs (equal: norms are elementwise).
"""
from __future__ import annotations

import argparse
import statistics

import torch
from report import emit, header

from engine.evaluation.cost import count_macs
from engine.evaluation.timing import timed
from engine.models.classifier import NoiseConditionedClassifier
from engine.storage.config import ClassifierConfig


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn, repeats))


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    x, c = torch.randn(args.batch, 1, 80, 72), torch.zeros(args.batch)
    cot = torch.randn(2, args.batch, 10)
    lines = [header(__file__), f"Median of {args.repeats} after one warm-up, batch {args.batch}, random weights.", "",
             "| norm | forward s | adjoint (2 cotangents) s | forward GMAC/clip |", "|---|---:|---:|---:|"]
    rows = {}
    for norm in ("affine", "groupnorm"):
        clf = NoiseConditionedClassifier(ClassifierConfig(norm=norm)).eval()
        fwd = median_time(lambda clf=clf: clf.forward_with_tape(x, c), args.repeats)
        total = median_time(lambda clf=clf: clf.adjoint(clf.forward_with_tape(x, c), cot), args.repeats)
        rows[norm] = (fwd, total - fwd)
        macs = count_macs(lambda clf=clf: clf(x[:1], c[:1])) / 1e9
        lines.append(f"| {norm} | {fwd:.4f} | {total - fwd:.4f} | {macs:.3f} |")
    lines += ["", f"groupnorm / affine: forward x{rows['groupnorm'][0] / rows['affine'][0]:.2f}, "
                  f"adjoint x{rows['groupnorm'][1] / rows['affine'][1]:.2f}"]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
