"""CLI: parameters, MACs and CPU wall time per sampling step of a checkpoint, as a Markdown table.

    python benchmarks/step_cost.py [--checkpoint DIR] [--out benchmarks/results/step_cost.md]

MACs count convolutions, transposed convolutions, matmuls and attention on the executed graph; times are
the median (and quartiles) of one score evaluation on this machine's CPU, guided and unguided side by side.
"""
from __future__ import annotations

import argparse
import sys

from report import emit, header

from engine.evaluation.cost import step_cost, time_score_eval
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--model", default="tapdiff")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    bundle = load_bundle(args.checkpoint, model=args.model)
    c = step_cost(bundle)
    g = 1e9
    lines = [
        header(__file__),
        f"Model {c.model}. Parameters: {c.total_params:,} total, {c.trainable_params:,} trainable (the score network).",
        "",
        "| part | GMACs per clip per score evaluation |",
        "|---|---:|",
        *[f"| {k} | {v / g:.3f} |" for k, v in c.parts.items()],
        f"| **step, unguided** | **{c.unguided_macs / g:.3f}** |",
        f"| **step, guided** | **{c.guided_macs / g:.3f}** |",
        "",
        "| batch | guidance | median s / score eval | p10 | p90 | ms per clip |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in args.batches:
        for gamma in (0.0, 3.0):
            t = time_score_eval(bundle, b, gamma, repeats=args.repeats)
            lines.append(f"| {b} | {gamma:g} | {t['median']:.4f} | {t['p10']:.4f} | {t['p90']:.4f} | "
                         f"{1000 * t['median'] / b:.1f} |")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
