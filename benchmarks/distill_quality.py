"""CLI: distilled students against their 15-evaluation teachers on the standard evaluator, two seeds, and the
quality rule that decides whether tapdiff's student becomes the default.

    python benchmarks/distill_quality.py --checkpoint engine/checkpoints/fsdd -n 10 --seeds 0,1 \
        --steps 2,3,4 --rhos sde,3 --cache runs/distill_rows.json \
        --out benchmarks/results/distill_quality.md --json benchmarks/results/distill_quality.json --write

For each teacher in the bundle (``tapdiff``, ``two-model``) that has a student: the teacher with its
checkpoint's default run, and the student at every (solver, steps, rho) asked for (``multistep``, the
students' own sampler, by default); 10 clips per
digit, guided (gamma 3), each seed; recognised fraction and FD against the real test clips, judged by the
evaluation classifier on re-analysed audio (``--vocoder``, Griffin-Lim by default: the vocoder every figure so far
was judged with). The rule: a student may become the
default only if its mean recognised fraction and mean FD are both no worse than the teacher's beyond the
seed-to-seed spread measured here (the larger of the two systems' spreads, max minus min over seeds).
``--write`` stores each student's best setting (most recognised, then lowest FD) in
``sampling.models.<student>`` with its numbers and the rule's verdict. Time per clip is not measured here:
``tapdiff bench`` times every system interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from report import cache_key, command, emit, header, load_cache, record, save_cache

from engine.api import Engine
from engine.audio.datasets import DEFAULT_DATA
from engine.bundle import has_model, load_bundle
from engine.diffusion.guidance import DEFAULT_GUIDANCE
from engine.diffusion.solvers import SamplerSpec
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.models.registry import SCORE_NETWORKS, score_network_kind
from engine.storage.atomic import atomic_write_bytes
from engine.storage.checkpoint import SAMPLING_DEFAULTS, update_config


def rho_value(text: str) -> float | None:
    return None if text == "sde" else float(text)


def row(engine: Engine, judge: QualityJudge, spec: SamplerSpec, seeds: list[int], n: int, cache: dict,
        cache_path: str | None, weights: str) -> dict:
    per_seed = []
    for seed in seeds:
        key = cache_key(engine.model_name, weights, spec.label(), n, seed, DEFAULT_GUIDANCE, engine.vocoder_name)
        if key not in cache:
            r = evaluate_quality(engine, judge, n, DEFAULT_GUIDANCE, seed, spec)
            cache[key] = {"recognised": r.recognised, "fd": r.fd}
            save_cache(cache_path, cache)
        per_seed.append(cache[key])
    rec = [p["recognised"] for p in per_seed]
    fd = [p["fd"] for p in per_seed]
    return {"model": engine.model_name, "spec": spec.label(), "solver": spec.solver, "steps": spec.steps,
            "rho": spec.rho, "nfe": spec.nfe, "per_seed": per_seed,
            "recognised": statistics.mean(rec), "fd": statistics.mean(fd),
            "recognised_spread": max(rec) - min(rec), "fd_spread": max(fd) - min(fd)}


def verdict(teacher: dict, student: dict) -> dict:
    """The rule: both means no worse than the teacher's beyond the larger seed-to-seed spread."""
    rec_margin = max(teacher["recognised_spread"], student["recognised_spread"])
    fd_margin = max(teacher["fd_spread"], student["fd_spread"])
    ok_rec = student["recognised"] >= teacher["recognised"] - rec_margin
    ok_fd = student["fd"] <= teacher["fd"] + fd_margin
    return {"recognised_ok": ok_rec, "fd_ok": ok_fd, "meets_rule": ok_rec and ok_fd,
            "recognised_margin": rec_margin, "fd_margin": fd_margin}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="engine/checkpoints/fsdd")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="2,3,4", help="the students' budgets (one evaluation a step)")
    p.add_argument("--solvers", default="multistep", help="the students' solvers (one-evaluation-per-step ones)")
    p.add_argument("--rhos", default="sde,3", help="schedule rho per student row ('sde': the SDE's)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--vocoder", default="griffin-lim", help="the vocoder of every row (the judge hears its audio)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--write", action="store_true", help="store each student's best setting in its sampling entry")
    p.add_argument("--students", default=None,
                   help="comma-separated students to judge (default: every student the bundle holds with its teacher)")
    args = p.parse_args()
    wanted = None if args.students is None else set(args.students.split(","))
    if wanted is not None and not wanted <= {k for k, v in SCORE_NETWORKS.items() if v.teacher}:
        p.error(f"--students {args.students}: students are {[k for k, v in SCORE_NETWORKS.items() if v.teacher]}")
    record(__file__)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = load_bundle(args.checkpoint, model=None).config
    judge = None
    cache = load_cache(args.cache)
    systems = []
    for student_name, kind in SCORE_NETWORKS.items():
        if kind.teacher is None or not has_model(config, student_name) or not has_model(config, kind.teacher):
            continue
        if wanted is not None and student_name not in wanted:
            continue
        teacher_engine = Engine(args.checkpoint, model=kind.teacher, backend=args.backend, vocoder=args.vocoder)
        judge = judge or QualityJudge(load_bundle(args.checkpoint, model=None, need_evaluator=True), args.data,
                                      teacher_engine.labels)
        teacher_w = config["files"][f"{score_network_kind(kind.teacher).weights}.safetensors"]
        teacher = row(teacher_engine, judge, teacher_engine.sampler_spec(), seeds, args.n, cache, args.cache, teacher_w)
        print(json.dumps(teacher), flush=True)
        student_engine = Engine(args.checkpoint, model=student_name, backend=args.backend, vocoder=args.vocoder)
        student_w = config["files"][f"{kind.weights}.safetensors"]
        students = []
        for solver, steps, rho in ((v, int(s), rho_value(r)) for v in args.solvers.split(",")
                                   for s in args.steps.split(",") for r in args.rhos.split(",")):
            spec = student_engine.check_spec(SamplerSpec(solver, steps, rho))
            students.append(row(student_engine, judge, spec, seeds, args.n, cache, args.cache, student_w))
            students[-1]["verdict"] = verdict(teacher, students[-1])
            print(json.dumps(students[-1]), flush=True)
        best = max(students, key=lambda r: (r["recognised"], -r["fd"]))
        systems.append({"teacher": teacher, "students": students, "best": best["spec"], "student": student_name})
        if args.write:
            entry = {"sampler": best["solver"], "steps": best["steps"], "rho": best["rho"], "guidance_fade_sigma": 0.0,
                     "vocoder": config.get("sampling", {}).get("vocoder", SAMPLING_DEFAULTS["vocoder"]),
                     "measured_with_vocoder": args.vocoder, "chosen_by": command(__file__), "recognised": best["recognised"], "fd": best["fd"],
                     "meets_default_rule": best["verdict"]["meets_rule"]}
            now = load_bundle(args.checkpoint, model=None).config.get("sampling", {})
            update_config(args.checkpoint, {"sampling": {**now, "models": {**now.get("models", {}), student_name: entry}}})
    emit(render(systems, args, seeds), args.out)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps({**record(__file__), "systems": systems}, indent=1) + "\n").encode())
    return 0


def render(systems: list[dict], args, seeds: list[int]) -> str:
    lines = [header(__file__),
             f"{args.n} clips per digit, guidance {DEFAULT_GUIDANCE:g}, seeds {', '.join(map(str, seeds))}, backend "
             f"{args.backend}, vocoder {args.vocoder}; judged by the evaluation classifier on re-analysed audio. Cells: mean over "
             "seeds (per seed in brackets). Rule for a new default: the student's mean recognised fraction and mean FD "
             "no worse than its teacher's beyond the larger seed-to-seed spread (max - min) of the two.", ""]
    for s in systems:
        t = s["teacher"]
        lines += [f"### {s['student']} (teacher: {t['model']}, {t['spec']})", "",
                  "| system | run | NFE | recognised | FD | meets the rule |", "|---|---|---:|---:|---:|---|"]

        def cells(r):
            rec = " / ".join(f"{p['recognised']:.2f}" for p in r["per_seed"])
            fd = " / ".join(f"{p['fd']:.1f}" for p in r["per_seed"])
            return f"{r['nfe']} | {r['recognised']:.3f} ({rec}) | {r['fd']:.1f} ({fd})"

        lines.append(f"| {t['model']} (teacher) | {t['spec']} | {cells(t)} | reference |")
        for r in s["students"]:
            v = r["verdict"]
            why = "yes" if v["meets_rule"] else "no (" + ", ".join(
                w for w, ok in (("recognised", v["recognised_ok"]), ("FD", v["fd_ok"])) if not ok) + ")"
            lines.append(f"| {r['model']}{' (best)' if r['spec'] == s['best'] else ''} | {r['spec']} | {cells(r)} | {why} |")
        v = next(r for r in s["students"] if r["spec"] == s["best"])["verdict"]
        lines += ["", f"Margins: recognised {v['recognised_margin']:.3f}, FD {v['fd_margin']:.1f} (the larger spread of "
                      "teacher and best student).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
