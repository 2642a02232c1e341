"""CLI: how long FSDD's clips are, in frames of the engine's features: what the 72-frame window keeps whole.

    python benchmarks/clip_lengths.py --out benchmarks/results/clip_lengths.md
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from report import emit, header

from engine.audio.datasets import DEFAULT_DATA, list_items
from engine.audio.wav import read_wav
from engine.storage.config import FeatureConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = FeatureConfig()
    frames = []
    for split in ("train", "test"):
        for it in list_items(args.data, split):
            x, rate = read_wav(it.path)
            frames.append(len(x) / rate * cfg.sample_rate / cfg.hop_length)
    f = np.array(frames)
    pct = {q: float(np.percentile(f, q)) for q in (50, 90, 95, 97, 99)}
    lines = [header(__file__), f"{len(f)} clips; length in frames of {cfg.hop_length} samples at {cfg.sample_rate} Hz.", "",
             "| percentile | " + " | ".join(str(q) for q in pct) + " | max |", "|---|" + "---:|" * (len(pct) + 1),
             "| frames | " + " | ".join(f"{v:.1f}" for v in pct.values()) + f" | {f.max():.1f} |", "",
             f"The window of {cfg.frames} frames keeps {float((f <= cfg.frames).mean()):.1%} of the clips whole; longer "
             "ones are cropped to their most energetic window."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
