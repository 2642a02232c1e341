"""CLI: eager torch against the exported graph in onnxruntime, side by side in one process, and their parity.

    python benchmarks/backend_speed.py --checkpoint engine/checkpoints/fsdd --models tapdiff,two-model \
        --batch 1,16 --repeats 20 --quality 10 --out benchmarks/results/backend_speed.md \
        --json benchmarks/results/backend_speed.json

Per model, batch and guidance: one score evaluation timed for every variant in turn within each round
(eager torch; onnxruntime at each graph-optimisation level and thread count asked for), so machine noise
hits all of them alike; the ratio to eager is taken per round, and its median and 10th-90th percentiles
reported. Then one whole ``generate`` of ``--clips`` clips (default solver, vocoder included) per backend,
interleaved the same way. Parity: the final mels of the same request on both backends, and with
``--quality N`` the recognised fraction and FD of N clips per digit on each. onnxruntime's thread pool
does not spin (a spinning pool slows the PyTorch code that runs next in the process).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from report import emit, header, record

from engine.api import Engine
from engine.evaluation.cost import score_eval
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.storage.atomic import atomic_write_bytes
from engine.storage.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs
from export.ort_runtime import OrtScoreModel


def _csv(cast):
    return lambda text: [cast(v) for v in text.split(",") if v.strip()]


def quantiles(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return {"median": statistics.median(xs), "p10": qs[0], "p90": qs[-1]}


def interleaved(fns: dict[str, callable], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall time of each fn, one call of each per round, ``repeats`` rounds after ``warmup``."""
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    return {k: quantiles([a / b for a, b in zip(v, times[base])]) for k, v in times.items() if k != base}


@torch.no_grad()
def score_speed(engine: Engine, args, cache) -> list[dict]:
    bundle, model = engine.bundle, engine.score_model
    graphs = ensure_score_graphs(model, bundle, GraphSpec.of(bundle, model), cache)
    variants = {f"onnxruntime {lv}, {th} thr": OrtScoreModel(graphs, threads=th, level=lv)
                for lv in args.levels for th in args.threads}
    rows = []
    for batch in args.batch:
        for gamma in (3.0, 0.0):
            fn, x, s = score_eval(bundle, batch, gamma, model)
            fns = {"torch": lambda fn=fn: fn(x, s)}
            for name, ort in variants.items():
                ofn, _, _ = score_eval(bundle, batch, gamma, ort)
                fns[name] = lambda ofn=ofn: ofn(x, s)
            t = interleaved(fns, args.repeats)
            rows.append({"model": engine.model, "batch": batch, "guidance": gamma, "times_s": t,
                         "median_s": {k: statistics.median(v) for k, v in t.items()}, "ratio_to_torch": ratios(t, "torch")})
            print(json.dumps({k: rows[-1][k] for k in ("model", "batch", "guidance", "median_s")}), flush=True)
    return rows


def generate_speed(engines: dict[str, Engine], clips: int, repeats: int) -> dict:
    digits = list(next(iter(engines.values())).labels)
    labels = [digits[i % len(digits)] for i in range(clips)]
    t = interleaved({k: (lambda e=e: e.generate(labels, seed=0)) for k, e in engines.items()}, repeats, warmup=1)
    return {"clips": clips, "times_s": t, "median_s": {k: statistics.median(v) for k, v in t.items()},
            "ratio_to_torch": ratios(t, "torch")}


def parity(engines: dict[str, Engine], args, judge: QualityJudge | None) -> dict:
    eager, ort = engines["torch"], engines["onnxruntime"]
    digits = list(eager.labels)
    a, b = (e.generate(digits, n=2, seed=1) for e in (eager, ort))
    out = {"mels_max_abs_diff": float((a.mels - b.mels).abs().max()), "mels_max_abs": float(a.mels.abs().max()),
           "sampler": eager.default_sampler.label()}
    out["mels_max_rel_diff"] = out["mels_max_abs_diff"] / out["mels_max_abs"]
    if judge is not None:
        for name, e in engines.items():
            r = evaluate_quality(e, judge, args.quality, 3.0, args.seed)
            out[name] = {"recognised": r.recognised, "fd": r.fd}
    return out


def render(result: dict, args) -> str:
    lines = [header(__file__),
             f"Score evaluations: median of {args.repeats} interleaved rounds after 2 warm-up rounds; ratio = backend / "
             "eager torch per round, median [p10, p90]. onnxruntime: CPU provider, intra-op spinning off, the exported "
             "graph of the engine's own score model (dynamic batch axis).", ""]
    for model, m in result["models"].items():
        lines += [f"### {model}", "", "| batch | guidance | backend | median ms | ratio to torch [p10, p90] |",
                  "|---:|---:|---|---:|---|"]
        for r in m["score"]:
            for k, med in r["median_s"].items():
                rt = r["ratio_to_torch"].get(k)
                cell = "1" if rt is None else f"{rt['median']:.2f} [{rt['p10']:.2f}, {rt['p90']:.2f}]"
                lines.append(f"| {r['batch']} | {r['guidance']:g} | {k} | {1e3 * med:.1f} | {cell} |")
        g = m["generate"]
        lines += ["", f"Whole `generate` of {g['clips']} clips ({m['parity']['sampler']}, Griffin-Lim), median of "
                      f"{args.gen_repeats}: " + ", ".join(f"{k} {v:.2f} s" for k, v in g["median_s"].items())
                  + "; ratio " + ", ".join(f"{k} {v['median']:.2f} [{v['p10']:.2f}, {v['p90']:.2f}]"
                                           for k, v in g["ratio_to_torch"].items()) + ".",
                  f"Parity (same request, seed 1, 2 clips per digit): max |mel difference| "
                  f"{m['parity']['mels_max_abs_diff']:.2e} on mels up to {m['parity']['mels_max_abs']:.1f} "
                  f"(relative {m['parity']['mels_max_rel_diff']:.1e})."]
        if "torch" in m["parity"]:
            p = m["parity"]
            lines.append(f"Quality ({args.quality} clips per digit, guidance 3): torch recognised {p['torch']['recognised']:.2f}, "
                         f"FD {p['torch']['fd']:.1f}; onnxruntime {p['onnxruntime']['recognised']:.2f}, FD "
                         f"{p['onnxruntime']['fd']:.1f}.")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", default="../shared/data/fsdd")
    p.add_argument("--models", type=_csv(str), default=["tapdiff", "two-model"])
    p.add_argument("--batch", type=_csv(int), default=[1, 16])
    p.add_argument("--levels", type=_csv(str), default=["all", "extended"], help="onnxruntime optimisation levels")
    p.add_argument("--threads", type=_csv(int), default=[torch.get_num_threads()], help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--clips", type=int, default=16, help="clips of the whole-generate comparison")
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--quality", type=int, default=0, help="clips per digit for the quality parity (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifacts", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    record(__file__)
    cache = args.artifacts or default_cache_dir()
    judge = None
    if args.quality:
        judge = QualityJudge(load_bundle(args.checkpoint, model=None, need_evaluator=True), args.data, range(10))
    result = {"models": {}}
    for model in args.models:
        engines = {"torch": Engine(args.checkpoint, model=model),
                   "onnxruntime": Engine(args.checkpoint, model=model, backend="onnxruntime", artifacts=cache)}
        result["models"][model] = {"score": score_speed(engines["torch"], args, cache),
                                   "generate": generate_speed(engines, args.clips, args.gen_repeats),
                                   "parity": parity(engines, args, judge)}
    emit(render(result, args), args.out)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps({**record(__file__), **result}, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
