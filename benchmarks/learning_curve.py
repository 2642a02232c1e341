"""CLI: learning curves of the score models (quality and held-out DSM loss against training seconds and
steps) and their cost at equal quality.

    python benchmarks/learning_curve.py --checkpoint runs/long --models tapdiff,two-model -n 10 \
        --cache runs/curve_rows.json --bench benchmarks/results/bench/bench.json \
        --out benchmarks/results/learning_curves.md --json benchmarks/results/learning_curves.json \
        --plot benchmarks/results/learning_curves.png

The curve of each model is config.json's training record for it, or the run's resumable state when that is
newer (``tapdiff train-score`` logs a point, with the held-out DSM loss per sigma band and the threads used,
at every snapshot); every point whose EMA snapshot
is in CHECKPOINT/state/ (not shipped: run it where the training ran) is judged like ``tapdiff evaluate``
(``-n`` clips per digit, guidance ``--guidance``, the checkpoint's default solver; recognised fraction and FD
from the evaluation classifier on re-analysed audio). ``--cache`` keeps judged points (keyed by model,
snapshot hash, code version and settings) so a run resumes and later snapshots add to it.

Cost at equal quality: for each FD level, the training seconds and steps each model took to first reach it,
and its guided score-evaluation latency and peak memory (batch 16, eager torch) from the bench results
given by ``--bench`` (they depend on the architecture, not on the training point).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from report import cache_key, emit, header, load_cache, record, save_cache

from engine.audio.datasets import DEFAULT_DATA
from engine.api import Engine
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.evaluation.render import Panel, Series, save_plot
from engine.models.registry import score_network_kind
from engine.storage.atomic import atomic_write_bytes
from engine.bundle import load_bundle
from engine.storage.checkpoint import load_weights, read_config
from engine.storage.hashing import file_sha256
from engine.storage.state_file import load_state, state_path

FD_LEVELS = (200.0, 150.0, 125.0, 100.0, 90.0, 80.0, 70.0, 65.0, 60.0)


def _sha(path: Path) -> str:
    return file_sha256(path)[:16]


def earlier_points(paths: list[str], settings: dict) -> dict:
    """(model, step) -> judged point, from earlier runs' JSON results judged with the same ``settings``
    (clips per digit, guidance, seed): a later session's curve keeps the points whose snapshots it no longer
    has. Each point carries the snapshot it judged and the commit and code version it was judged at."""
    out = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("settings") != settings:
            print(f"--earlier {path}: judged with {result.get('settings')}, not {settings}; its points are not used",
                  file=sys.stderr)
            continue
        at = {"commit": result.get("commit"), "code_version": result.get("code_version")}
        for model, pts in result["curves"].items():
            for pt in pts:
                if "fd" in pt:
                    out[(model, pt["step"])] = {**{k: pt[k] for k in ("recognised", "fd", "per_digit", "sampler", "snapshot")
                                                   if k in pt}, "judged_at": pt.get("judged_at", at)}
    return out


def judge_points(args, model: str, judge: QualityJudge, cache: dict, earlier: dict | None = None) -> list[dict]:
    """The model's training curve, each point with a snapshot on disk judged (from the cache when done)."""
    kind = score_network_kind(model)
    training = read_config(args.checkpoint).get("training", {}).get(kind.weights)
    if not training:
        raise ValueError(f"{args.checkpoint}: config.json has no training record for {kind.weights}")
    curve = training.get("curve", [])
    state = state_path(Path(args.checkpoint) / "state", kind.weights)
    if state.exists():  # a run still going (or stopped): its resumable state holds the newer points
        logged = load_state(state)["log"].get("curve", [])
        if len(logged) > len(curve):
            curve = logged
    snaps = Path(args.checkpoint) / "state" / f"{kind.weights}_snapshots"
    engine = None
    rows = []
    points = {}
    for point in curve:  # a continued run repeats its starting point (its snapshot name from the recorded seconds,
        # which are rounded, so the name may differ): one point per step, the latest record's
        points[point["step"]] = {**points.get(point["step"], {}), **point}
    for point in points.values():
        row = {"model": model, **point}
        f = snaps / f"{point.get('snapshot')}.safetensors"
        kept = (earlier or {}).get((model, point["step"]))
        if kept and args.keep_earlier and kept.get("snapshot") == point.get("snapshot"):
            row.update(kept, judged_earlier=True)  # judged before (its code version recorded), not again
        elif f.exists():
            key = cache_key(model, _sha(f), args.n, args.guidance, args.seed)
            if key not in cache:
                if engine is None:  # snapshots load into the eager module
                    engine = Engine(args.checkpoint, model=model, backend="torch", progress=False)
                load_weights(f.parent, f.stem, engine.torch_denoiser.denoiser.net, {})
                r = evaluate_quality(engine, judge, args.n, args.guidance, args.seed)
                cache[key] = {"recognised": r.recognised, "fd": r.fd, "per_digit": r.recognised_per_digit,
                              "sampler": engine.default_sampler.label()}
                save_cache(args.cache, cache)
                print(f"{model} {point['seconds']:.0f}s step {point['step']}: recognised "
                      f"{r.recognised:.3f} FD {r.fd:.1f}", flush=True)
            row.update(cache[key])
        elif kept:
            row.update(kept, judged_earlier=True)
        rows.append(row)
    return rows


def first_reaching(rows: list[dict], level: float) -> dict | None:
    for r in rows:
        if "fd" in r and r["fd"] <= level:
            return r
    return None


def bench_step_cost(bench_json: str | None, batch: int = 16) -> dict:
    """model -> {"latency_ms", "peak_mb"} of one guided score evaluation (eager torch) from bench results."""
    if not bench_json or not Path(bench_json).exists():
        return {}
    b = json.loads(Path(bench_json).read_text())
    out = {}
    for r in b["score_eval"]:
        if r["batch"] == batch and r["guidance"] > 0:
            for name, lat in r["latency_s"].items():
                model, backend = name.split("/")
                if backend == "torch":
                    out[model] = {"latency_ms": lat["median"] * 1e3, "peak_mb": r.get("peak_mb", {}).get(name),
                                  "source": f"{bench_json} (commit {b.get('commit', '?')[:12]})"}
    return out


def equal_quality(curves: dict[str, list[dict]], costs: dict, reference: str) -> list[dict]:
    rows = []
    for level in FD_LEVELS:
        row = {"fd_level": level}
        for model, pts in curves.items():
            hit = first_reaching(pts, level)
            first = hit is not None and hit is next(p for p in pts if "fd" in p)
            # reached at the first judged point: only "by then" is known, not when
            row[model] = None if hit is None else {"seconds": hit["seconds"], "step": hit["step"],
                                                   "recognised": hit["recognised"], "fd": hit["fd"], "by": first}
        others = [m for m in curves if m != reference]
        for m in others:
            a, b = row.get(m), row.get(reference)
            if a and b and not (a["by"] and b["by"]):
                # an upper bound where the numerator is only known "by then", a lower bound for the denominator
                row[f"{m} / {reference} training seconds"] = a["seconds"] / b["seconds"]
                row["ratio_bound"] = "≤" if a["by"] else "≥" if b["by"] else ""
        rows.append(row)
    return rows


def render(result: dict) -> str:
    out = []
    for model, pts in result["curves"].items():
        out.append(f"\n## {model}\n")
        bands = [k for k in next((p["heldout"] for p in pts if p.get("heldout")), {}) if k != "all"]
        out.append("| training s | step | steps/s since last | threads | recognised | FD | held-out DSM " +
                   " | ".join(f"σ {b}" for b in bands) + " | held-out all |")
        out.append("|---:" * (7 + len(bands)) + "|")
        prev = None
        for p in pts:
            rate = "" if prev is None or p["seconds"] <= prev["seconds"] else \
                f"{(p['step'] - prev['step']) / (p['seconds'] - prev['seconds']):.2f}"
            h = p.get("heldout") or {}
            mark = "*" if p.get("judged_earlier") else ""
            rec = f"{p['recognised']:.2f}{mark}" if "recognised" in p else "–"
            fd = f"{p['fd']:.1f}" if "fd" in p else "–"
            held = [f"{h[b]:.4f}" if b in h else "–" for b in (*bands, "all")]
            out.append(f"| {p['seconds']:.0f} | {p['step']} | {rate} | {p.get('threads', '?')} | {rec} | {fd} | " +
                       " | ".join(held) + " |")
            prev = p
        earlier = sorted({f"commit {(p['judged_at'].get('commit') or '?')[:12]}, code version "
                          f"{p['judged_at'].get('code_version')}" for p in pts if p.get("judged_earlier")
                          and p.get("judged_at")})
        if earlier:
            out.append(f"\n\\* judged in an earlier run ({'; '.join(earlier)}) and kept, not judged again.")
    models = list(result["curves"])
    out.append("\n## Cost at equal quality (first point at or below each FD)\n")
    out.append("≤ before a time: the level was already reached at the first judged point, so only an upper bound "
               "on when is known; ratios built on one such bound are bounds too.\n")
    costs = result["step_cost"]
    if costs:
        out.append("Guided score evaluation at batch 16, eager torch (from the bench results; the same for every "
                   "training point): " + "; ".join(
                       f"{m} {c['latency_ms']:.0f} ms, {c['peak_mb']:.0f} MB" for m, c in costs.items()
                       if c.get("peak_mb") is not None) + f". Source: {next(iter(costs.values()))['source']}.\n")
    out.append("| FD ≤ | " + " | ".join(f"{m}: training s (step) | {m}: recognised" for m in models) +
               " | training-time ratio |")
    out.append("|---:" * (1 + 2 * len(models) + 1) + "|")
    for row in result["equal_quality"]:
        cells = []
        for m in models:
            hit = row[m]
            cells += ["not reached", "–"] if hit is None else [
                f"{'≤ ' if hit.get('by') else ''}{hit['seconds']:.0f} ({hit['step']})", f"{hit['recognised']:.2f}"]
        ratio = next((f"{row.get('ratio_bound', '')} {v:.2f}".strip() for k, v in row.items()
                      if k.endswith("training seconds")), "–")
        out.append(f"| {row['fd_level']:g} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out) + "\n"


def plot(result: dict, path: str) -> None:
    """Recognised fraction, FD and the held-out loss per noise band against training seconds (top row) and
    steps (bottom row), one colour per model."""
    panels = []
    for x, xlabel in (("seconds", "training seconds"), ("step", "training steps")):
        recognised, fd, heldout = [], [], []
        for i, (model, pts) in enumerate(result["curves"].items()):
            judged = [p for p in pts if "fd" in p]
            colour = {"color": f"C{i % 10}"}
            recognised.append(Series(model, [p[x] for p in judged], [p["recognised"] for p in judged], style=colour))
            fd.append(Series(model, [p[x] for p in judged], [p["fd"] for p in judged], style=colour))
            held = [p for p in pts if p.get("heldout")]
            bands = [k for k in (held[0]["heldout"] if held else {}) if k != "all"]
            for j, band in enumerate(bands):
                heldout.append(Series(f"{model} σ {band}", [p[x] for p in held], [p["heldout"][band] for p in held],
                                      style={**colour, "marker": ".", "alpha": 0.4 + 0.6 * (j + 1) / len(bands)}))
        panels += [Panel("recognised (guided)", xlabel, recognised), Panel("FD (log)", xlabel, fd, ylog=True),
                   Panel("held-out DSM loss (log)", xlabel, heldout, ylog=True)]
    save_plot(path, panels, columns=3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--models", default="tapdiff,two-model")
    p.add_argument("--reference", default="two-model", help="the model ratios are taken against")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None)
    p.add_argument("--bench", default="benchmarks/results/bench/bench.json")
    p.add_argument("--earlier", nargs="*", default=[], help="earlier results JSON whose judged points fill in "
                   "points without a snapshot here (e.g. benchmarks/results/learning_curves.json); only files "
                   "judged with the same -n, --guidance and --seed count")
    p.add_argument("--keep-earlier", action="store_true", help="take --earlier's judged points even where their "
                   "snapshot is here, instead of judging them again under today's code version (the results "
                   "mark them and name the code version they were judged at)")
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    rec = record(__file__)
    cache = load_cache(args.cache)
    models = [m for m in args.models.split(",") if m]
    bundle = load_bundle(args.checkpoint, model=None, need_evaluator=True)
    judge = QualityJudge(bundle, args.data, bundle.labels)
    settings = {"n": args.n, "guidance": args.guidance, "seed": args.seed}
    earlier = earlier_points(args.earlier, settings)
    curves = {m: judge_points(args, m, judge, cache, earlier) for m in models}
    costs = bench_step_cost(args.bench)
    result = {**rec, "settings": settings,
              "curves": curves, "step_cost": {m: costs[m] for m in models if m in costs},
              "equal_quality": equal_quality(curves, costs, args.reference)}
    text = (f"{header(__file__)}\n# Learning curves\n\n{args.n} clips per digit, guidance {args.guidance:g}, the "
            "checkpoint's default solver, vocoder Griffin-Lim, judged by the evaluation classifier on re-analysed "
            "audio. Held-out DSM loss: the training objective on the test split at fixed noise levels and noise "
            "(3 levels per band). Steps/s shows the machine load each stretch ran under.\n" + render(result))
    emit(text, args.out)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
