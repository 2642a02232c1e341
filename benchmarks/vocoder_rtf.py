"""CLI: real-time factor of vocoding one second of audio, eager PyTorch and onnxruntime, side by side.

    python benchmarks/vocoder_rtf.py [--repeats 10] [--out benchmarks/results/vocoder_rtf.md]

Griffin-Lim (64 iterations, eager) and HiFi-GAN (eager and exported to ONNX, onnxruntime CPU provider).
HiFi-GAN needs `tapdiff vocoder import` first (or the tapdiff[vocoder] extra, from which it is imported
into a temporary folder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from report import emit, header

from engine.audio.vocoder_compare import real_time_factor
from engine.audio.vocoders import GriffinLim
from engine.storage.config import FeatureConfig


def hifigan_model(directory):
    from engine.audio.hifigan_import import import_vocoder
    from engine.audio.vocoder_store import default_vocoder_dir, load_vocoder

    d = Path(directory) if directory else default_vocoder_dir()
    if not (d / "hifigan.json").exists():
        d = import_vocoder("ts-package", tempfile.mkdtemp())
    return load_vocoder(d)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--hifigan-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from export.onnx_export import export_onnx, ort_session

    cfg = FeatureConfig()
    mel = torch.randn(1, cfg.n_mels, 100) - 5.0  # one second
    rows = {"griffin-lim (eager, 64 it)": real_time_factor(GriffinLim(cfg), mel, args.repeats)}
    model = hifigan_model(args.hifigan_dir)
    rows["hifigan (eager)"] = real_time_factor(model, mel, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, (mel,), tmp, "hifigan", ["log_mel"], ["wave"], lambda: (mel + 0.1,),
                           dynamic_axes={"log_mel": {0: "batch", 2: "frames"}, "wave": {0: "batch", 1: "samples"}})
        sess = ort_session(path)

        def ort_fn(m):
            return torch.from_numpy(sess.run(None, {"log_mel": m.numpy()})[0])

        rows["hifigan (onnxruntime CPU)"] = real_time_factor(ort_fn, mel, args.repeats)
    lines = [header(__file__),
             f"One second of audio (100 frames), batch 1, median of {args.repeats} after warm-up. RTF < 1 is faster "
             "than real time.", "",
             "| vocoder | RTF median | min | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['rtf_median']:.3f} | {v['rtf_min']:.3f} | {v['rtf_max']:.3f} |" for k, v in rows.items()]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
