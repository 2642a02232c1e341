"""CLI: tapdiff against the two-model pipeline and the x_t-only ablation, side by side, same seeds.

    python benchmarks/quality_table.py --checkpoint engine/checkpoints/fsdd \
        --checkpoint engine/checkpoints/fsdd_digit7 --clips 100 --out benchmarks/results/quality.md

Each checkpoint is a data regime (all ten digits, one digit, ...): its score models were trained on the
digits recorded in its config.json. For every system a checkpoint holds: recognised fraction and Frechet
distance, guided (gamma 3) and unguided, judged by the evaluation classifier on re-analysed audio;
``--clips`` clips per regime and guidance setting, split evenly over its digits, so every FD has the same
sample size; parameters; training budget; MACs per score evaluation; and CPU peak memory and median wall
time per score evaluation at batch 1 and 16. ``--cache FILE`` keeps finished quality rows (keyed by the
weights' sha256 and the settings) so an interrupted run resumes; timings are always measured afresh.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from report import command_line, emit

from engine.api import Engine
from engine.atomic import atomic_write_bytes
from engine.bundle import MODEL_NAMES, load_bundle
from engine.cost import peak_step_memory, step_cost, time_score_eval
from engine.data import list_items, load_features
from engine.evaluation import judge, real_halves_fd, recognition
from engine.evaluator import frechet_distance
from export.onnx_macs import traced_step_macs

GAMMAS = (3.0, 0.0)
BATCHES = (1, 16)


def quality(engine: Engine, ev, data: str, clips: int, steps: int | None, seed: int) -> dict:
    """Recognised fraction and FD against the real test clips of the model's digits, guided and unguided."""
    labels = list(engine.labels)
    per_digit = max(1, clips // len(labels))
    test = load_features(list_items(data, "test", tuple(labels)), ev.features)
    _, real = judge(ev.evaluator, test.mels, ev.normaliser)
    row = {"labels": labels, "clips": per_digit * len(labels), "real_clips": len(test),
           "fd_floor": real_halves_fd(ev.evaluator, test, ev.normaliser)}
    for gamma in GAMMAS:
        out = engine.generate(labels, n=per_digit, steps=steps, guidance=gamma, seed=seed)
        rec, _, emb = recognition(ev.evaluator, out.waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
        row[str(gamma)] = {"recognised": rec, "fd": frechet_distance(emb, real)}
    return row


def performance(engine: Engine, checkpoint: str, name: str) -> dict:
    """Median wall time and peak-RSS increase of one score evaluation, guided and unguided, batch 1 and 16."""
    return {f"{b}/{g}": {"median_s": time_score_eval(engine.bundle, b, g)["median_s"],
                         "peak_mb": peak_step_memory(checkpoint, name, b, g)["step_peak_increase_mb"]}
            for b in BATCHES for g in GAMMAS}


def budget(config: dict, name: str) -> str:
    t = config.get("training", {}).get(name, {})
    return f"{t['seconds']:.0f} s / {t['steps']:,}" if "seconds" in t else "?"


def load_cache(path: str | None) -> dict:
    if not path or not Path(path).exists():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"--cache {path} is not valid JSON ({e}); delete it to start afresh") from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--evaluator", default=None, help="bundle with the evaluation classifier (default: first checkpoint)")
    p.add_argument("--data", default="../shared/data/fsdd")
    p.add_argument("--clips", type=int, default=100, help="generated clips per regime and guidance setting")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: each checkpoint's chosen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="JSON file of finished quality rows, to resume an interrupted run")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    ev = load_bundle(args.evaluator or args.checkpoint[0], need_subnet=False, need_evaluator=True)
    cache = load_cache(args.cache)
    rows = []
    for ckpt in args.checkpoint:
        config = load_bundle(ckpt, need_subnet=False).config
        for model, name in MODEL_NAMES.items():
            if f"{name}_config" not in config:
                continue
            engine = Engine(ckpt, model=model)
            key = json.dumps([str(Path(ckpt).resolve()), model, config["files"][f"{name}.safetensors"],
                              args.clips, args.steps, args.seed, args.data])
            if key not in cache:
                cache[key] = quality(engine, ev, args.data, args.clips, args.steps, args.seed)
                if args.cache:
                    atomic_write_bytes(args.cache, json.dumps(cache, indent=1).encode())
            b = engine.bundle
            cost = step_cost(b)
            traced = traced_step_macs(b.extractor, b.subnet, b.features.n_mels, b.features.frames, b.labels[0])
            if (traced["guided"]["total"], traced["unguided"]["total"]) != (cost.guided_macs, cost.unguided_macs):
                raise RuntimeError(f"{model}: MACs of the traced graph {traced} differ from the eager count {cost}")
            rows.append({"regime": Path(ckpt).name, "model": model, "quality": cache[key], "cost": cost,
                         "budget": budget(config, name), "weights_mb": 4 * cost.total_params / 2**20,
                         "perf": performance(engine, ckpt, name)})
            print(json.dumps({k: rows[-1][k] for k in ("regime", "model", "quality", "budget")}), flush=True)
    emit(render(rows, args), args.out)
    return 0


def render(rows: list[dict], args) -> str:
    lines = [
        command_line(__file__),
        "",
        f"CPU: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. Seed {args.seed}; "
        f"{args.clips} generated clips per regime and guidance setting, against the real test clips of the same "
        "digits; quality judged by the independent evaluation classifier on re-analysed audio. Time and memory "
        "are per score evaluation (one Euler-Maruyama step; a Heun step makes two). Peak MB is the peak-RSS "
        "increase during the evaluation over the resident process (weights already loaded); weights MB is "
        "float32 parameters of everything the system keeps loaded. MACs per clip per score evaluation are counted "
        "on the exported ONNX graph (export/onnx_macs.py) and equal torch's FlopCounterMode count of the eager code.",
        "",
        "| regime (digits) | system | recognised guided | FD guided | recognised unguided | FD unguided | "
        "FD floor (real halves) | params total / trainable | training s / steps | GMAC guided / unguided | "
        "ms b1 g / u | ms b16 g / u | peak MB b1 g / u | peak MB b16 g / u | weights MB |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---:|",
    ]
    for r in rows:
        q, c, pf = r["quality"], r["cost"], r["perf"]
        g, u = q[str(GAMMAS[0])], q[str(GAMMAS[1])]

        def pair(b: int, key: str, scale: float, fmt: str) -> str:
            return " / ".join(format(scale * pf[f"{b}/{gm}"][key], fmt) for gm in GAMMAS)

        lines.append(
            f"| {r['regime']} ({','.join(map(str, q['labels']))}) | {r['model']} | {g['recognised']:.2f} | {g['fd']:.1f} | "
            f"{u['recognised']:.2f} | {u['fd']:.1f} | {q['fd_floor']:.1f} | "
            f"{c.total_params / 1e6:.2f}M / {c.trainable_params / 1e6:.2f}M | {r['budget']} | "
            f"{c.guided_macs / 1e9:.3f} / {c.unguided_macs / 1e9:.3f} | {pair(1, 'median_s', 1e3, '.1f')} | "
            f"{pair(16, 'median_s', 1e3, '.0f')} | {pair(1, 'peak_mb', 1, '.0f')} | {pair(16, 'peak_mb', 1, '.0f')} | "
            f"{r['weights_mb']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
