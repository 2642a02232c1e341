"""CLI: milliseconds per clip of every vocoder at batch 1 and 16, side by side, with its copy-synthesis quality.

    python benchmarks/vocoder_rtf.py [--clips N] [--rounds 5] [--pghi-iters 0,2,4,8] [--no-hifigan]
                                     [--evaluator DIR] [--out benchmarks/results/vocoder_rtf.md]

Griffin-Lim (64 iterations, eager), PGHI followed by k fast Griffin-Lim iterations for each k of --pghi-iters
(the one registered as `pghi` is marked), and HiFi-GAN eager and exported to ONNX (onnxruntime CPU provider), on
the log-Mels of FSDD test clips: PGHI's cost depends on what it vocodes (its heap integration runs over the bins
above a tolerance), so random Mels would misstate it. All are timed on 16 of the clips in the same interleaved
rounds (``vocoder_compare.seconds_per_clip``). Copy-synthesis quality (``vocoder_compare.copy_synthesis``) on every
test clip (or --clips of them): STOI, log-spectral distance, and the evaluation classifier's recognised fraction and
FD on the re-analysed audio, over all clips and over the even and odd halves; each row against Griffin-Lim's by the
rule of issue 38 (no worse beyond Griffin-Lim's half-to-half spread). HiFi-GAN needs `tapdiff vocoder import`
first (or the tapdiff[vocoder] extra, from which it is imported into a temporary folder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from report import emit, header

from engine.audio.datasets import DEFAULT_DATA
from engine.evaluation.vocoder_compare import (HALVES, QUALITY_FORMATS, against_baseline, compare_vocoders,
                                          load_reference_clips)
from engine.audio.vocoders import GriffinLim, PGHIGriffinLim, make_vocoder
from engine.bundle import load_bundle
from engine.evaluation.quality import QualityJudge
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
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


HEADINGS = {"stoi": "STOI", "lsd": "LSD dB", "recognised": "recognised", "fd": "FD"}  # one per quality measure


def _table_head(first: list[str], measures: list[str], last: list[str] = ()) -> list[str]:
    cells = [*first, *measures, *last]
    return ["| " + " | ".join(cells) + " |", "|---|" + "---:|" * (len(cells) - 1)]


def render(rows: list[dict], source: str, rounds: int) -> str:
    base, vocoded = rows[1], rows[1:]  # rows[0]: the real recordings
    headings = [HEADINGS[m] for m in QUALITY_FORMATS]
    lines = [f"Time: 16 of the clips below (0.72 s each, spread over the digits) vocoded one at a time (batch 1) and "
             f"16 at a time; milliseconds per clip, median [min, max] of {rounds} interleaved rounds after a warm-up "
             "round, and the median's ratio to Griffin-Lim's.", "",
             *_table_head(["vocoder"], ["batch 1 ms/clip", "x GL", "batch 16 ms/clip", "x GL"])]
    for r in vocoded:
        cells = [f"{r[f'ms_b{b}']:.2f} [{r[f'ms_b{b}_min']:.2f}, {r[f'ms_b{b}_max']:.2f}] | "
                 f"{r[f'ms_b{b}'] / base[f'ms_b{b}']:.3f}" for b in BATCHES]
        lines.append(f"| {r['vocoder']} | {' | '.join(cells)} |")
    lines += ["", f"Copy synthesis of {source}: STOI and log-spectral distance against the recordings (clips joined "
              "end to end), and the evaluation classifier's recognised fraction and FD (against the real test clips' "
              "embeddings) on the re-analysed audio; each over all clips, then in brackets over the "
              f"{' and '.join(HALVES)} halves (FD on a half is biased up by its fewer clips: compare halves with "
              "halves). The real recordings, re-analysed alike, are the reference.", "",
              *_table_head(["vocoder"], headings)]
    for r in rows:
        cells = [f"{r[m]:{f}} ({' / '.join(format(r['halves'][h][m], f) for h in HALVES)})"
                 for m, f in QUALITY_FORMATS.items()]
        lines.append(f"| {r['vocoder']} | {' | '.join(cells)} |")
    lines += ["", f"Against {base['vocoder']} (issue 38: no worse beyond its half-to-half spread): how much worse each "
              "row is (negative: better) / the spread, and whether it meets the rule.", "",
              *_table_head(["vocoder"], headings, ["all met"])]
    for r in rows[2:]:
        verdict = against_baseline(r, base)
        cells = [f"{v['worse_by']:+{QUALITY_FORMATS[m]}} / {v['spread']:{QUALITY_FORMATS[m]}} "
                 f"{'yes' if v['meets'] else 'NO'}" for m, v in verdict.items()]
        met = "yes" if all(v["meets"] for v in verdict.values()) else "NO"
        lines.append(f"| {r['vocoder']} | {' | '.join(cells)} | {met} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--clips", type=int, default=None, help="test clips copy-synthesised (default: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pghi-iters", default="0,2,4,8", help="comma-separated Griffin-Lim iterations after PGHI")
    p.add_argument("--no-hifigan", action="store_true", help="time the Griffin-Lim variants only")
    p.add_argument("--hifigan-dir", default=None)
    p.add_argument("--evaluator", default=str(DEFAULT_CHECKPOINT), help="folder holding the evaluation classifier")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    evaluator = load_bundle(args.evaluator, model=None, need_evaluator=True)
    judge = QualityJudge(evaluator, args.data, evaluator.labels)
    cfg = judge.features
    reference = load_reference_clips(args.data, args.clips, cfg, judge.digits)
    vocoders = griffin_lim_vocoders(cfg, [int(k) for k in args.pghi_iters.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_hifigan:
            model = hifigan_model(args.hifigan_dir)
            vocoders["hifigan (eager)"] = model
            vocoders["hifigan (onnxruntime CPU)"] = ort_vocoder(model, torch.randn(1, cfg.n_mels, cfg.frames) - 5, tmp)
        rows = compare_vocoders(vocoders, reference, judge, BATCHES, args.rounds)
    emit("\n".join([header(__file__), render(rows, reference.source, args.rounds)]) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
