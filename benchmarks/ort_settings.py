"""CLI: onnxruntime session settings (graph optimisation level, intra-op threads) for the score graph,
interleaved in one process, each against eager torch; what engine/runtimes/ort.py's defaults rest on.

    python benchmarks/ort_settings.py --out benchmarks/results/ort_settings.md
"""
from __future__ import annotations

import argparse
import sys

import torch
from report import emit, header, record

from engine.api import Engine
from engine.evaluation.timing import interleaved, paired_ratio
from engine.evaluation.cost import score_eval
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs
from engine.runtimes.ort import LEVELS, OrtScoreModel


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--model", default="tapdiff")
    p.add_argument("--batch", type=lambda t: [int(v) for v in t.split(",")], default=[1, 16])
    p.add_argument("--threads", type=lambda t: [int(v) for v in t.split(",")], default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    record(__file__)
    engine = Engine(args.checkpoint, model=args.model, backend="torch")
    graphs = ensure_score_graphs(engine.torch_denoiser, engine.bundle, GraphSpec.of(engine.bundle, engine.torch_denoiser),
                                 default_cache_dir())
    lines = [header(__file__), f"{args.model}, guided score evaluation; median of {args.repeats} interleaved rounds; "
             "ratio to eager torch per round, median [p10, p90].", "",
             "| batch | onnxruntime level | threads | ms | ratio to torch |", "|---:|---|---:|---:|---|"]
    for batch in args.batch:
        fns = {"torch": score_eval(engine.bundle, batch, 3.0, engine.torch_denoiser)}
        for level in LEVELS[1:]:
            for th in args.threads:
                fns[(level, th)] = score_eval(engine.bundle, batch, 3.0, OrtScoreModel(graphs, threads=th, level=level))
        times = interleaved({k: (lambda f=f: f[0](f[1], f[2])) for k, f in fns.items()}, args.repeats)
        for k, v in times.items():
            if k == "torch":
                continue
            q = paired_ratio(v, times["torch"])
            lines.append(f"| {batch} | {k[0]} | {k[1]} | {1e3 * sorted(v)[len(v) // 2]:.1f} | "
                         f"{q['median']:.2f} [{q['p10']:.2f}, {q['p90']:.2f}] |")
        lines.append(f"| {batch} | eager torch | {torch.get_num_threads()} | "
                     f"{1e3 * sorted(times['torch'])[len(times['torch']) // 2]:.1f} | 1 |")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
