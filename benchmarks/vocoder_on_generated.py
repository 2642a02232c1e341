"""CLI: which vocoder makes generated mels most recognisable? Generated mels have no reference waveform, so
each vocoder's output (Griffin-Lim, PGHI, HiFi-GAN: engine.audio.vocoders.VOCODERS) is re-analysed from scratch and
judged by the evaluation classifier; the real test clips' recognised fraction and the FD between their two halves
are the reference. HiFi-GAN's row says why it is skipped when it is neither imported nor importable.

    python benchmarks/vocoder_on_generated.py [--checkpoint DIR] -n 10 --out benchmarks/results/vocoder_on_generated.md
"""
from __future__ import annotations

import argparse
import sys

import torch
from report import emit, header

from engine.audio.datasets import DEFAULT_DATA
from engine.api import Engine
from engine.audio.vocoders import VOCODERS, make_vocoder
from engine.errors import VocoderCacheError
from engine.evaluation.quality import QualityJudge
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hifigan-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    engine = Engine(args.checkpoint, vocoder="griffin-lim")
    judge = QualityJudge(load_bundle(args.checkpoint, model=None, need_evaluator=True), args.data, engine.labels)
    out = engine.generate(list(engine.labels), n=args.n, guidance=args.guidance, seed=args.seed)
    lines = [header(__file__),
             f"{len(out.labels)} generated clips (guidance {args.guidance:g}, {engine.default_sampler.label()}, seed "
             f"{args.seed}); the same mels through each vocoder, judged on re-analysed audio. Reference: the "
             f"{judge.real_clips} real test clips are recognised {judge.real_recognised:.3f}; the FD between their two "
             f"halves is {judge.floor:.1f}.", "",
             "| vocoder | recognised | FD | per digit |", "|---|---:|---:|---|"]
    for name in VOCODERS:
        try:
            voc = make_vocoder(name, engine.bundle.features, args.hifigan_dir)
        except VocoderCacheError as e:
            if name != "hifigan":
                raise
            lines.append(f"| {name} | skipped: {e} | | |")
            continue
        with torch.no_grad():
            waves = torch.cat([voc(out.mels[i:i + 16]) for i in range(0, len(out.mels), 16)])
        rec, per, emb = judge.recognition(waves, out.labels, out.sample_rate)
        lines.append(f"| {name} | {rec:.3f} | {judge.fd(emb):.1f} | {' '.join(f'{d}:{v:.1f}' for d, v in per.items())} |")
        print(lines[-1], flush=True)
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
