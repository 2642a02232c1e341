"""CLI: tapdiff against the two-model pipeline and the x_t-only ablation, side by side, same seeds.

    python benchmarks/quality_table.py --checkpoint engine/checkpoints/fsdd [--checkpoint CKPT_ONE_DIGIT ...] \
        -n 10 --out benchmarks/results/quality.md

For each checkpoint (a data regime: all ten digits, one digit, ...) and each system it holds: recognised
fraction and Frechet distance (guided gamma 3 and unguided; judged by the evaluation classifier on
re-analysed audio), parameters, MACs per score evaluation, and CPU peak memory and median wall time per
score evaluation at batch 1 and 16.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from report import command_line, emit

from engine.api import Engine
from engine.bundle import MODEL_NAMES, load_bundle
from engine.data import list_items, load_features
from engine.evaluation import judge, real_halves_fd, recognition
from engine.evaluator import frechet_distance
from engine.cost import peak_step_memory, step_cost, time_score_eval


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--evaluator", default=None, help="bundle with the evaluation classifier (default: first checkpoint)")
    p.add_argument("--data", default="../shared/data/fsdd")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    ev = load_bundle(args.evaluator or args.checkpoint[0], need_subnet=False, need_evaluator=True)
    rows = []
    for ckpt in args.checkpoint:
        base = load_bundle(ckpt, need_subnet=False)
        labels = list(base.labels)
        test = load_features(list_items(args.data, "test", tuple(labels)), ev.features)
        _, real = judge(ev.evaluator, test.mels, ev.normaliser)
        floor = real_halves_fd(ev.evaluator, test, ev.normaliser)
        for model, name in MODEL_NAMES.items():
            if f"{name}_config" not in base.config:
                continue
            engine = Engine(ckpt, model=model)
            quality = {}
            for gamma in (3.0, 0.0):
                out = engine.generate(labels, n=args.n, steps=args.steps, guidance=gamma, seed=args.seed)
                rec, _, emb = recognition(ev.evaluator, out.waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
                quality[gamma] = (rec, frechet_distance(emb, real))
            cost = step_cost(engine.bundle)
            perf = {b: {g: (time_score_eval(engine.bundle, b, g)["median_s"], peak_step_memory(ckpt, name, b, g)["step_peak_increase_mb"])
                        for g in (3.0, 0.0)} for b in (1, 16)}
            rows.append((Path(ckpt).name, len(labels), model, quality, cost, perf, floor))
            print(rows[-1][:4], flush=True)
    lines = [
        command_line(__file__),
        f"CPU: {platform.machine()}, {torch.get_num_threads()} torch threads. {args.n} clips per digit, seed {args.seed}; "
        "time and memory are per score evaluation (a predictor-corrector step makes two).", "",
        "| regime | system | recognised guided | FD guided | recognised unguided | FD unguided | FD floor (real halves) | "
        "params total / trainable | GMAC guided / unguided | ms b1 g/u | ms b16 g/u | peak MB b1 g/u | peak MB b16 g/u |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|",
    ]
    for ck, n_labels, model, q, c, perf, floor in rows:
        lines.append(
            f"| {ck} ({n_labels} digits) | {model} | {q[3.0][0]:.3f} | {q[3.0][1]:.1f} | {q[0.0][0]:.3f} | {q[0.0][1]:.1f} | "
            f"{floor:.1f} | {c.total_params / 1e6:.2f}M / {c.trainable_params / 1e6:.2f}M | "
            f"{c.guided_macs / 1e9:.3f} / {c.unguided_macs / 1e9:.3f} | "
            f"{1e3 * perf[1][3.0][0]:.1f} / {1e3 * perf[1][0.0][0]:.1f} | {1e3 * perf[16][3.0][0]:.1f} / {1e3 * perf[16][0.0][0]:.1f} | "
            f"{perf[1][3.0][1]:.0f} / {perf[1][0.0][1]:.0f} | {perf[16][3.0][1]:.0f} / {perf[16][0.0][1]:.0f} |")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
