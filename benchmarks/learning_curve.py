"""CLI: recognised fraction (guided) against ScoreSubnet training time, from the EMA snapshots that
`tapdiff train-score` writes every --snapshot-every seconds.

    python benchmarks/learning_curve.py --checkpoint engine/checkpoints/fsdd -n 5 --steps 50 \
        --out benchmarks/results/learning_curve.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import command_line, emit

from engine.api import Engine
from engine.bundle import load_bundle
from engine.checkpoint import DEFAULT_CHECKPOINT, load_weights
from engine.evaluation import recognition


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--snapshots", default=None, help="default: CHECKPOINT/state/score_subnet_snapshots")
    p.add_argument("-n", type=int, default=5, help="clips per digit")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    snaps = Path(args.snapshots or Path(args.checkpoint) / "state" / "score_subnet_snapshots")
    files = sorted(snaps.glob("*.safetensors"))
    if not files:
        print(f"no snapshots in {snaps}", file=sys.stderr)
        return 2
    ev = load_bundle(args.checkpoint, need_subnet=False, need_evaluator=True)
    engine = Engine(args.checkpoint)
    rows = ["| training seconds | recognised (guided) | per digit |", "|---:|---:|---|"]
    for f in files:
        load_weights(f.parent, f.stem, engine.bundle.subnet, {})
        out = engine.generate(list(engine.labels), n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed)
        rec, per, _ = recognition(ev.evaluator, out.waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
        rows.append(f"| {int(f.stem.rstrip('s'))} | {rec:.3f} | {' '.join(f'{d}:{v:.1f}' for d, v in per.items())} |")
        print(rows[-1], flush=True)
    text = (f"{command_line(__file__)}\n\n"
            f"{args.n} clips per digit, guidance {args.guidance:g}, steps {args.steps or engine.default_steps}, "
            f"sampler {engine.default_sampler}, vocoder {engine.vocoder_name}, judged by the evaluation classifier "
            "on re-analysed audio.\n\n" + "\n".join(rows) + "\n")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
