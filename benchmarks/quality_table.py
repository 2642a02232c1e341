"""CLI: tapdiff against the two-model pipeline and the x_t-only ablation, side by side, same seeds.

    python benchmarks/quality_table.py --checkpoint engine/checkpoints/fsdd \
        --checkpoint engine/checkpoints/fsdd_digits012 --checkpoint engine/checkpoints/fsdd_digit7 \
        --clips 100 --out benchmarks/results/quality.md

Each checkpoint is a data regime (all ten digits, three digits, one digit): its score models were trained on the
digits recorded in its config.json. For every system a checkpoint holds: recognised fraction and Frechet
distance, guided (gamma 3) and unguided, judged by the evaluation classifier on re-analysed audio;
``--clips`` clips per regime and guidance setting, split evenly over its digits, so every FD has the same
sample size; parameters; training budget; MACs per score evaluation; and CPU peak memory and median wall
time per score evaluation at batch 1 and 16. ``--cache FILE`` keeps finished quality rows (keyed by the
weights' sha256, the code version and the settings) so an interrupted run resumes; timings are always
measured afresh.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from report import cache_key, emit, header, load_cache, record, save_cache

from engine.audio.datasets import DEFAULT_DATA
from engine.api import Engine
from engine.evaluation.cost import step_cost, time_score_eval
from engine.evaluation.memory import MIB
from engine.evaluation.memory.process_probe import Runtime, measured_memory
from engine.evaluation.render import table
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.models.registry import SCORE_NETWORKS
from engine.bundle import has_model, load_bundle
from export.onnx_macs import traced_step_macs

GAMMAS = (3.0, 0.0)
BATCHES = (1, 16)


def quality(engine: Engine, ev, data: str, clips: int, seed: int, sampler: str | None, nfe: int | None) -> dict:
    """Recognised fraction and FD against the real test clips of the model's digits, guided and unguided."""
    judge = QualityJudge(ev, data, engine.labels)
    per_digit = max(1, clips // len(judge.digits))
    row = {"labels": judge.digits, "clips": per_digit * len(judge.digits), "real_clips": judge.real_clips,
           "fd_floor": judge.floor}
    for gamma in GAMMAS:
        r = evaluate_quality(engine, judge, per_digit, gamma, seed, engine.sampler_spec(sampler, nfe=nfe))
        row[str(gamma)] = {"recognised": r.recognised, "fd": r.fd, "sampler": r.sampler, "nfe": r.nfe}
    return row


def performance(engine: Engine, checkpoint: str) -> dict:
    """Median wall time and peak-RSS increase of one score evaluation, guided and unguided, batch 1 and 16."""
    return {f"{b}/{g}": {"median_s": time_score_eval(engine.bundle, b, g)["median"],
                         "peak_mb": measured_memory(checkpoint, engine.model_name, Runtime("torch"), b, g,
                                                   evals=4)["steady_peak_increase_bytes"] / MIB}
            for b in BATCHES for g in GAMMAS}


def budget(config: dict, name: str) -> str:
    t = config.get("training", {}).get(name, {})
    return f"{t['seconds']:.0f} s / {t['steps']:,}" if "seconds" in t else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--evaluator", default=None, help="bundle with the evaluation classifier (default: first checkpoint)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--clips", type=int, default=100, help="generated clips per regime and guidance setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, help="solver (default: each checkpoint's chosen one)")
    p.add_argument("--nfe", type=int, default=None, help="score evaluations per clip (default: the checkpoint's)")
    p.add_argument("--cache", default=None, help="JSON file of finished quality rows, to resume an interrupted run")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    record(__file__)  # provenance of the code that measures, before anything runs
    ev = load_bundle(args.evaluator or args.checkpoint[0], model=None, need_evaluator=True)
    cache = load_cache(args.cache)
    rows = []
    for ckpt in args.checkpoint:
        config = load_bundle(ckpt, model=None).config
        for model, kind in SCORE_NETWORKS.items():
            if not has_model(config, model):
                continue
            engine = Engine(ckpt, model=model, backend="torch")  # the timing columns are eager torch's
            spec = engine.sampler_spec(args.sampler, nfe=args.nfe)
            key = cache_key(str(Path(ckpt).resolve()), model, config["files"][f"{kind.weights}.safetensors"],
                            spec.label(), args.clips, args.seed, args.data)
            if key not in cache:
                cache[key] = quality(engine, ev, args.data, args.clips, args.seed, args.sampler, args.nfe)
                save_cache(args.cache, cache)
            cost = step_cost(engine.bundle, engine.torch_denoiser)
            traced = traced_step_macs(engine.torch_denoiser, engine.bundle.input_hw)
            if (traced["guided"]["total"], traced["unguided"]["total"]) != (cost.guided_macs, cost.unguided_macs):
                raise RuntimeError(f"{model}: MACs of the traced graph {traced} differ from the eager count {cost}")
            rows.append({"regime": Path(ckpt).name, "model": model, "quality": cache[key], "cost": cost,
                         "budget": budget(config, kind.weights), "weights_mb": 4 * cost.total_params / 2**20,
                         "perf": performance(engine, ckpt), "sampler": spec.label()})
            print(json.dumps({k: rows[-1][k] for k in ("regime", "model", "quality", "budget")}), flush=True)
    emit(render(rows, args), args.out)
    return 0


def render(rows: list[dict], args) -> str:
    samplers = sorted({r["sampler"] for r in rows})
    lines = [
        header(__file__),
        f"Seed {args.seed}; {args.clips} generated clips per regime and guidance setting, against the real test clips "
        f"of the same digits, solver {'; '.join(samplers)}; quality judged by the "
        "independent evaluation classifier on re-analysed audio. Time and memory "
        "are per score evaluation (a solver with 2 evaluations per step makes two per step). Peak MB is the peak-RSS "
        "increase during the evaluation over the resident process (weights already loaded); weights MB is "
        "float32 parameters of everything the system keeps loaded. MACs per clip per score evaluation are counted "
        "on the exported ONNX graph (export/onnx_macs.py) and equal torch's FlopCounterMode count of the eager code.",
        "",
    ]

    def pair(pf: dict, b: int, key: str, scale: float, fmt: str) -> str:
        return " / ".join(format(scale * pf[f"{b}/{gm}"][key], fmt) for gm in GAMMAS)

    cells = []
    for r in rows:
        q, c, pf = r["quality"], r["cost"], r["perf"]
        g, u = q[str(GAMMAS[0])], q[str(GAMMAS[1])]
        cells.append([f"{r['regime']} ({','.join(map(str, q['labels']))})", r["model"], f"{g['recognised']:.2f}",
                      f"{g['fd']:.1f}", f"{u['recognised']:.2f}", f"{u['fd']:.1f}", f"{q['fd_floor']:.1f}",
                      f"{c.total_params / 1e6:.2f}M / {c.trainable_params / 1e6:.2f}M", r["budget"],
                      f"{c.guided_macs / 1e9:.3f} / {c.unguided_macs / 1e9:.3f}", pair(pf, 1, "median_s", 1e3, ".1f"),
                      pair(pf, 16, "median_s", 1e3, ".0f"), pair(pf, 1, "peak_mb", 1, ".0f"),
                      pair(pf, 16, "peak_mb", 1, ".0f"), f"{r['weights_mb']:.1f}"])
    lines += table(["regime (digits)", "system", "recognised guided", "FD guided", "recognised unguided", "FD unguided",
                    "FD floor (real halves)", "params total / trainable", "training s / steps", "GMAC guided / unguided",
                    "ms b1 g / u", "ms b16 g / u", "peak MB b1 g / u", "peak MB b16 g / u", "weights MB"],
                   cells, "llrrrrrlllllllr")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
