"""CLI: quality (recognised fraction and FD, guided) against training time, from the EMA snapshots that
`tapdiff train-score` writes every --snapshot-every seconds.

    python benchmarks/learning_curve.py --checkpoint engine/checkpoints/fsdd --model tapdiff -n 10 \
        --out benchmarks/results/learning_curve_tapdiff.md

Snapshots live in CHECKPOINT/state/ (not shipped): run it where the training ran.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import emit, header

from engine.api import Engine
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.models.registry import score_network_kind
from engine.storage.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT, load_weights


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--model", default="tapdiff")
    p.add_argument("--data", default="../shared/data/fsdd")
    p.add_argument("--snapshots", default=None, help="default: CHECKPOINT/state/<weights>_snapshots")
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    kind = score_network_kind(args.model)
    snaps = Path(args.snapshots or Path(args.checkpoint) / "state" / f"{kind.weights}_snapshots")
    files = sorted(snaps.glob("*.safetensors"))
    if not files:
        print(f"no snapshots in {snaps}", file=sys.stderr)
        return 2
    engine = Engine(args.checkpoint, model=args.model)
    judge = QualityJudge(load_bundle(args.checkpoint, model=None, need_evaluator=True), args.data, engine.labels)
    rows = ["| training seconds | recognised (guided) | FD | per digit |", "|---:|---:|---:|---|"]
    for f in files:
        load_weights(f.parent, f.stem, engine.score_model.denoiser.net, {})
        r = evaluate_quality(engine, judge, args.n, args.guidance, args.seed)
        per = " ".join(f"{d}:{v:.1f}" for d, v in r.recognised_per_digit.items())
        rows.append(f"| {int(f.stem.rstrip('s'))} | {r.recognised:.3f} | {r.fd:.1f} | {per} |")
        print(rows[-1], flush=True)
    text = (f"{header(__file__)}\n{args.n} clips per digit, guidance {args.guidance:g}, "
            f"{engine.default_sampler.label()}, vocoder {engine.vocoder_name}, judged by the evaluation classifier "
            "on re-analysed audio.\n\n" + "\n".join(rows) + "\n")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
