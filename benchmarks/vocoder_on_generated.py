"""CLI: which vocoder makes generated mels most recognisable? Generated mels have no reference waveform, so
each vocoder's output is re-analysed from scratch and judged by the evaluation classifier.

    python benchmarks/vocoder_on_generated.py [--checkpoint DIR] -n 10 --out benchmarks/results/vocoder_on_generated.md
"""
from __future__ import annotations

import argparse
import sys

import torch
from report import command_line, emit

from engine.api import Engine
from engine.bundle import load_bundle
from engine.checkpoint import DEFAULT_CHECKPOINT
from engine.evaluation import recognition
from engine.vocoder import VOCODERS, make_vocoder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hifigan-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    engine = Engine(args.checkpoint, vocoder="griffin-lim", batch_size=25)
    ev = load_bundle(args.checkpoint, need_subnet=False, need_evaluator=True)
    out = engine.generate(list(engine.labels), n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed)
    lines = [command_line(__file__), "",
             f"{len(out.labels)} generated clips (guidance {args.guidance:g}, steps {args.steps or engine.default_steps}, "
             f"sampler {engine.default_sampler}, seed {args.seed}); the same mels through each vocoder.", "",
             "| vocoder | recognised | per digit |", "|---|---:|---|"]
    for name in VOCODERS:
        voc = make_vocoder(name, engine.bundle.features, args.hifigan_dir)
        with torch.no_grad():
            waves = torch.cat([voc(out.mels[i:i + 16]) for i in range(0, len(out.mels), 16)])
        rec, per, _ = recognition(ev.evaluator, waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
        lines.append(f"| {name} | {rec:.3f} | {' '.join(f'{d}:{v:.1f}' for d, v in per.items())} |")
        print(lines[-1], flush=True)
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
