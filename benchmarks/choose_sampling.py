"""CLI: choose a checkpoint's default sampler, steps and guidance fade by measurement, and record them.

    python benchmarks/choose_sampling.py --checkpoint engine/checkpoints/fsdd -n 5 \
        --out benchmarks/results/sampling_choice.md --write

Each candidate generates the same digits with the same seed at guidance 3; the evaluation classifier
judges the re-analysed audio. The winner (most recognised,
then lowest Frechet distance) is written to the checkpoint's config.json "sampling" section with --write,
which is what Engine uses by default.
"""
from __future__ import annotations

import argparse
import sys
import time

from report import command_line, emit

from engine.api import Engine
from engine.bundle import load_bundle
from engine.checkpoint import DEFAULT_CHECKPOINT, update_config
from engine.data import list_items, load_features
from engine.evaluation import judge, recognition
from engine.evaluator import frechet_distance

# (sampler, steps, guidance fade sigma). Score evaluations: PC 2 per step, Heun 2 per step but the last, EM 1.
CANDIDATES = [("heun", 25, 0.0), ("heun", 50, 0.0), ("pc", 50, 0.0), ("euler_maruyama", 100, 0.0), ("heun", 25, 1.0)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", default="../shared/data/fsdd")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--write", action="store_true", help="record the winner in the checkpoint's config.json")
    args = p.parse_args()
    ev = load_bundle(args.checkpoint, need_subnet=False, need_evaluator=True)
    engine = Engine(args.checkpoint, vocoder="griffin-lim", batch_size=25)
    digits = list(engine.labels)
    test = load_features(list_items(args.data, "test", tuple(digits)), ev.features)
    _, real = judge(ev.evaluator, test.mels, ev.normaliser)
    rows, results = [], []
    for sampler, steps, fade in CANDIDATES:
        engine.fade_sigma = fade
        t0 = time.monotonic()
        out = engine.generate(digits, n=args.n, steps=steps, guidance=args.guidance, seed=args.seed, sampler=sampler)
        rec, _, emb = recognition(ev.evaluator, out.waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
        fd = frechet_distance(emb, real)
        results.append((rec, -fd, sampler, steps, fade))
        rows.append(f"| {sampler} | {steps} | {fade:g} | {rec:.3f} | {fd:.1f} | {time.monotonic() - t0:.0f} |")
        print(rows[-1], flush=True)
    rec, neg_fd, sampler, steps, fade = max(results)
    lines = [command_line(__file__), "",
             f"{args.n} clips per digit, guidance {args.guidance:g}, seed {args.seed}, Griffin-Lim; judged by the "
             "evaluation classifier on re-analysed audio. Wall time on this CPU.", "",
             "| sampler | steps | guidance fade sigma | recognised | FD | seconds |", "|---|---:|---:|---:|---:|---:|",
             *rows, "", f"Chosen: {sampler}, {steps} steps, fade {fade:g} (recognised {rec:.3f}, FD {-neg_fd:.1f})."]
    emit("\n".join(lines) + "\n", args.out)
    if args.write:
        update_config(args.checkpoint, {"sampling": {
            "sampler": sampler, "steps": steps, "guidance_fade_sigma": fade,
            "vocoder": engine.bundle.config.get("sampling", {}).get("vocoder", "griffin-lim"),
            "chosen_by": command_line(__file__), "recognised": rec, "fd": -neg_fd}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
