"""CLI: ScoreSubnet width sweep at an equal training budget, on the same frozen classifier.

    python benchmarks/width_sweep.py --checkpoint engine/checkpoints/fsdd \
        --widths 24,48,64,96 32,64,96,144 48,96,128,224 --seconds 3000 --work runs/widths -n 10 \
        --out benchmarks/results/width_sweep.md --json benchmarks/results/width_sweep.json

For each width list: a bundle in WORK/<widths> holding the checkpoint's classifier, evaluator and features
but no score network, a new ScoreSubnet of those widths trained for ``--seconds`` training seconds (the same
``tapdiff train-score`` run; resumable, so an interrupted sweep carries on; a finished one is not retrained),
then judged like ``tapdiff evaluate`` (``-n`` clips per digit, guidance 3, the checkpoint's default solver)
with its held-out DSM loss from the last snapshot. Run several instances with disjoint ``--widths`` to use
more cores (one thread each: ``OMP_NUM_THREADS=1``), then one with all of them to write the table. With
``--cache FILE`` a judged width is kept (keyed by its weights' hash, the code version and the judging settings),
so widths already trained can be judged while others still train.
Steps and steps/s are recorded beside the budget, so unequal machine load is visible.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from report import cache_key, emit, header, load_cache, record, save_cache

from engine.audio.datasets import DEFAULT_DATA
from engine import cli_parser
from engine.api import Engine
from engine.provenance import code_version
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.models.registry import SCORE_NETWORKS
from engine.training.workflows import ScoreRun, train_score_network
from engine.storage.atomic import atomic_write_bytes
from engine.bundle import load_bundle
from engine.storage.checkpoint import read_config, write_config

SHARED_FILES = ("classifier.safetensors", "evaluator.safetensors")


def classifier_only(base: Path, out: Path) -> None:
    """``out``: a bundle with ``base``'s classifier, evaluator, features, SDE and sampling, no score network."""
    if (out / "config.json").exists():
        return
    cfg = read_config(base)
    kinds = SCORE_NETWORKS.values()
    drop = {k.config_key for k in kinds}
    cfg = {k: v for k, v in cfg.items() if k not in drop}
    cfg["training"] = {k: v for k, v in cfg.get("training", {}).items() if k not in {n.weights for n in kinds}}
    cfg["files"] = {k: v for k, v in cfg.get("files", {}).items() if k in SHARED_FILES}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in SHARED_FILES:
        shutil.copy2(base / name, tmp / name)
    write_config(tmp, cfg)
    tmp.rename(out)  # a half-made bundle is never mistaken for a finished one


def train(bundle: Path, widths: tuple[int, ...], args) -> None:
    done = read_config(bundle).get("training", {}).get("score_subnet", {})
    if done.get("seconds", 0) >= args.seconds:
        return
    cmd = ["train-score", "--checkpoint", str(bundle), "--data", args.data, "--widths", ",".join(map(str, widths)),
           "--seconds", str(args.seconds), "--snapshot-every", str(args.snapshot_every), "--seed", str(args.seed),
           "--heldout-clips", str(args.heldout_clips)]
    # the command recorded beside the weights is the one that reproduces this run on its own
    train_score_network(ScoreRun(bundle, args.data, "tapdiff", args.seconds, widths, snapshot_every=args.snapshot_every,
                                 heldout_clips=args.heldout_clips, seed=args.seed, command="tapdiff " + " ".join(shlex.quote(a) for a in cmd)))


def judge(bundle: Path, args, cache: dict) -> dict:
    """The width's row, from ``cache`` when these weights were judged the same way by the same code."""
    cfg = read_config(bundle)
    version = code_version()
    key = cache_key(str(bundle.resolve()), cfg["files"]["score_subnet.safetensors"], args.n, args.guidance,
                    args.seed, args.data)
    if key not in cache:
        cache[key] = {**judged(bundle, cfg, args), "code_version": version}
        save_cache(args.cache, cache)
    return cache[key]


def judged(bundle: Path, cfg: dict, args) -> dict:
    t = cfg["training"]["score_subnet"]
    engine = Engine(bundle, backend="torch")
    ev = load_bundle(bundle, model=None, need_evaluator=True)
    r = evaluate_quality(engine, QualityJudge(ev, args.data, engine.labels), args.n, args.guidance, args.seed)
    last = next((p for p in reversed(t.get("curve", [])) if p.get("heldout")), {})
    return {"widths": list(cfg["score_subnet_config"]["widths"]),
            "params": sum(p.numel() for p in engine.torch_denoiser.denoiser.net.parameters()),
            "seconds": t["seconds"], "steps": t["steps"], "threads": t.get("threads"),
            "recognised": r.recognised, "fd": r.fd, "heldout": last.get("heldout"), "sampler": r.sampler,
            "curve": [{"seconds": p["seconds"], "steps": p["step"], "heldout": p["heldout"]["all"]}
                      for p in t.get("curve", []) if p.get("heldout")]}


def render(rows: list[dict]) -> str:
    bands = [k for k in (rows[0]["heldout"] or {}) if k != "all"] if rows else []
    out = ["| widths | params | training s | steps | steps/s | threads | recognised | FD | held-out DSM " +
           " | ".join(f"σ {b}" for b in bands) + " | held-out all |", "|---" + "|---:" * (8 + len(bands)) + "|"]
    for r in rows:
        h = r["heldout"] or {}
        held = " | ".join(f"{h[b]:.4f}" if b in h else "–" for b in (*bands, "all"))
        out.append(f"| {','.join(map(str, r['widths']))} | {r['params'] / 1e6:.2f}M | {r['seconds']:.0f} | {r['steps']:,} | "
                   f"{r['steps'] / r['seconds']:.2f} | {r['threads'] or '?'} | {r['recognised']:.2f} | {r['fd']:.1f} | "
                   f"{held} |")
    return "\n".join(out) + "\n"


def render_curves(rows: list[dict]) -> str:
    """Held-out DSM loss (all bands) at every snapshot, with its step: wider networks take fewer steps in the
    same time, so this shows whether a width is behind for its size or only for its step count."""
    out = ["| widths | held-out all at training s (steps) |", "|---|---|"]
    for r in rows:
        points = ", ".join(f"{p['heldout']:.4f} at {p['seconds']:.0f} ({p['steps']:,})" for p in r.get("curve", []))
        out.append(f"| {','.join(map(str, r['widths']))} | {points or '–'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="engine/checkpoints/fsdd", help="bundle whose classifier is shared")
    p.add_argument("--widths", type=cli_parser.widths, nargs="+", required=True, help="one comma-separated list per run")
    p.add_argument("--seconds", type=float, default=3000.0, help="training seconds per width")
    p.add_argument("--snapshot-every", type=float, default=600.0)
    p.add_argument("--heldout-clips", type=int, default=250,
                   help="test clips of the held-out loss, the same for every width so the column compares them")
    p.add_argument("--work", default="runs/widths", help="folder of the sweep's bundles")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="store_true", help="train, write no table (for parallel instances)")
    p.add_argument("--cache", default=None, help="JSON file of judged widths, so widths already trained can be "
                   "judged while others train, and an interrupted run resumes")
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rec = record(__file__)
    bundles = {}
    for w in args.widths:
        bundles[w] = Path(args.work) / "-".join(map(str, w))
        classifier_only(Path(args.checkpoint), bundles[w])
        train(bundles[w], w, args)
    if args.train_only:
        return 0
    cache = load_cache(args.cache)
    rows = [judge(b, args, cache) for b in bundles.values()]
    text = (f"{header(__file__)}\n# ScoreSubnet width sweep\n\nEach width trained from scratch for {args.seconds:.0f} "
            f"training seconds on the frozen classifier of `{args.checkpoint}`; {args.n} clips per digit, guidance "
            f"{args.guidance:g}, {rows[0]['sampler']}, judged by the evaluation classifier on re-analysed audio. "
            "Held-out DSM loss: the last snapshot's, on the test split at fixed noise levels and noise.\n\n" + render(rows)
            + "\n## Held-out DSM loss along the way\n\n" + render_curves(rows))
    emit(text, args.out)
    if args.json:
        atomic_write_bytes(args.json, json.dumps({**rec, "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
