"""CLI: milliseconds per clip of every vocoder at batch 1 and 16, side by side, with its copy-synthesis quality.

    python benchmarks/vocoder_rtf.py [--clips 16] [--rounds 5] [--pghi-iters 0,2,4,8] [--no-hifigan]
                                     [--out benchmarks/results/vocoder_rtf.md]

Griffin-Lim (64 iterations, eager), PGHI followed by k fast Griffin-Lim iterations for each k of --pghi-iters
(the one registered as `pghi` is marked), and HiFi-GAN eager and exported to ONNX (onnxruntime CPU provider), on
the log-Mels of FSDD test clips: PGHI's cost depends on what it vocodes (its heap integration runs over the bins
above a tolerance), so random Mels would misstate it. All are timed in the same interleaved rounds
(``vocoder_compare.seconds_per_clip``). HiFi-GAN needs `tapdiff vocoder import` first (or the tapdiff[vocoder]
extra, from which it is imported into a temporary folder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from report import emit, header

from engine.audio.datasets import DEFAULT_DATA
from engine.audio.vocoder_compare import compare_vocoders, test_clip_waves
from engine.audio.vocoders import GriffinLim, PGHIGriffinLim, make_vocoder
from engine.storage.config import FeatureConfig

BATCHES = (1, 16)


def hifigan_model(directory):
    from engine.audio.hifigan_import import import_vocoder
    from engine.audio.vocoder_store import default_vocoder_dir, load_vocoder

    d = Path(directory) if directory else default_vocoder_dir()
    if not (d / "hifigan.json").exists():
        d = import_vocoder("ts-package", tempfile.mkdtemp())
    return load_vocoder(d)


def griffin_lim_vocoders(cfg: FeatureConfig, pghi_iters: list[int]) -> dict:
    """Griffin-Lim from zero phase (64 iterations) and from PGHI (each of ``pghi_iters`` iterations), by row name."""
    registered = make_vocoder("pghi", cfg).n_iter
    vocoders = {"griffin-lim (64 it)": GriffinLim(cfg)}
    for k in pghi_iters:
        vocoders[f"pghi + {k} it" + (" (`pghi`)" if k == registered else "")] = PGHIGriffinLim(cfg, k)
    return vocoders


def ort_vocoder(model, mel: torch.Tensor, folder: str):
    """HiFi-GAN exported to ONNX in ``folder`` and run by onnxruntime's CPU provider."""
    from export.onnx_export import export_onnx, ort_session

    path = export_onnx(model, (mel,), folder, "hifigan", ["log_mel"], ["wave"], lambda: (mel + 0.1,),
                       dynamic_axes={"log_mel": {0: "batch", 2: "frames"}, "wave": {0: "batch", 1: "samples"}})
    sess = ort_session(path)

    def ort_fn(m):
        return torch.from_numpy(sess.run(None, {"log_mel": m.numpy()})[0])

    return ort_fn


def render(rows: list[dict], clips: int, rounds: int) -> str:
    base = rows[0]
    lines = [f"{clips} FSDD test clips (0.72 s each) vocoded one at a time (batch 1) and 16 at a time; milliseconds "
             f"per clip, median [min, max] of {rounds} interleaved rounds after a warm-up round, and the median's "
             "ratio to Griffin-Lim's. STOI and log-spectral distance of the copy synthesis of the same clips.", "",
             "| vocoder | batch 1 ms/clip | x GL | batch 16 ms/clip | x GL | STOI | LSD dB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[f'ms_b{b}']:.2f} [{r[f'ms_b{b}_min']:.2f}, {r[f'ms_b{b}_max']:.2f}] | "
                 f"{r[f'ms_b{b}'] / base[f'ms_b{b}']:.3f}" for b in BATCHES]
        lines.append(f"| {r['vocoder']} | {' | '.join(cells)} | {r['stoi']:.4f} | {r['lsd']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pghi-iters", default="0,2,4,8", help="comma-separated Griffin-Lim iterations after PGHI")
    p.add_argument("--no-hifigan", action="store_true", help="time the Griffin-Lim variants only")
    p.add_argument("--hifigan-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    cfg = FeatureConfig()
    waves = test_clip_waves(args.data, args.clips, cfg)
    vocoders = griffin_lim_vocoders(cfg, [int(k) for k in args.pghi_iters.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_hifigan:
            model = hifigan_model(args.hifigan_dir)
            vocoders["hifigan (eager)"] = model
            vocoders["hifigan (onnxruntime CPU)"] = ort_vocoder(model, torch.randn(1, cfg.n_mels, cfg.frames) - 5, tmp)
        rows = compare_vocoders(vocoders, waves, cfg, BATCHES, args.rounds)
    emit("\n".join([header(__file__), render(rows, len(waves), args.rounds)]) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
