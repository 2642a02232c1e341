"""CLI: quality against score evaluations (NFE) for every solver, and the checkpoint's default chosen by it.

    python benchmarks/choose_sampling.py --checkpoint engine/checkpoints/fsdd --models tapdiff,two-model \
        --nfe 10,15,20,30,50,100 -n 10 --cache runs/sampling_rows.json \
        --out benchmarks/results/sampling_choice.md --plot benchmarks/results/sampling_choice.png --write

Every point generates ``n`` clips per digit with the same seed at guidance ``--guidance``, judged like
``tapdiff evaluate`` (evaluation classifier on re-analysed audio: recognised fraction, FD to the real test
clips). Wall time per clip beside each point comes from a separate timing pass at the end (``--time-clips``
clips per point, one batch, after a warm-up), so the quality pass may share the machine; keep the machine
quiet for the timing pass. The choice, for the first model: the
reference is Euler-Maruyama at 100 NFE; among the points whose recognised fraction is within
``--tolerance`` of it and whose FD is at most ``--fd-ratio`` x its FD, the fewest NFE wins (then the lower
FD). With ``--write`` it is recorded in the checkpoint's config.json ("sampling"), which ``Engine`` uses
by default. ``--cache`` keeps finished points (keyed by weights, code version and settings): a run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from report import cache_key, command, emit, header, record

from engine.audio.datasets import DEFAULT_DATA
from engine.api import Engine
from engine.diffusion.solvers import SOLVERS, SamplerSpec
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.evaluation.render import Panel, Series, save_plot
from engine.evaluation.timing import timed
from engine.models.registry import score_network_kind
from engine.storage.atomic import atomic_write_bytes
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT, update_config

REFERENCE = ("euler_maruyama", 100)


def _csv(cast):
    return lambda text: [cast(v) for v in text.split(",") if v.strip()]


def sweep(args, cache: dict) -> list[dict]:
    rows = []
    ev = load_bundle(args.checkpoint, model=None, need_evaluator=True)
    for model in args.models:
        engine = Engine(args.checkpoint, model=model, vocoder="griffin-lim", batch_size=args.batch,
                        backend="torch")  # each fade is a denoiser of its own: the eager module builds at once
        judge = QualityJudge(ev, args.data, engine.labels)
        weights = engine.bundle.weights_sha256(score_network_kind(model).weights)
        for fade, rho in ((f, r) for f in args.fades for r in args.rhos):
            for solver in args.solvers:
                for nfe in args.nfe:
                    spec = SamplerSpec.from_nfe(solver, nfe, rho, fade_sigma=fade)
                    key = cache_key(str(Path(args.checkpoint).resolve()), model, weights,
                                    SamplerSpec.from_nfe(solver, nfe, rho).label(), fade, args.guidance, args.n,
                                    args.seed, args.data, args.batch)
                    if key not in cache:
                        r = evaluate_quality(engine, judge, args.n, args.guidance, args.seed, spec)
                        cache[key] = {"model": model, "solver": solver, "nfe_budget": nfe, "nfe": spec.nfe,
                                      "steps": spec.steps, "fade": fade, "rho": rho, "recognised": r.recognised,
                                      "fd": r.fd, "fd_floor": r.fd_real_halves}
                        if args.cache:
                            atomic_write_bytes(args.cache, json.dumps(cache, indent=1).encode())
                    rows.append(cache[key])
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def time_points(rows: list[dict], args) -> None:
    """Seconds per clip of every point, sampling and vocoding one batch of ``--time-clips`` clips."""
    for model in args.models:
        engine = Engine(args.checkpoint, model=model, vocoder="griffin-lim", batch_size=args.time_clips,
                        backend="torch")
        labels = [engine.labels[i % len(engine.labels)] for i in range(args.time_clips)]
        engine.generate(labels, n=1, guidance=args.guidance, sampler="euler_maruyama", nfe=5)  # warm-up
        for r in rows:
            if r["model"] == model:
                spec = SamplerSpec(r["solver"], r["steps"], r.get("rho"), fade_sigma=r["fade"])
                engine.generate(labels, n=1, guidance=args.guidance, spec=spec)  # builds this fade's denoiser
                once = timed(lambda: engine.generate(labels, n=1, guidance=args.guidance, seed=args.seed, spec=spec),
                             repeats=1, warmup=0)
                r["seconds_per_clip"] = once[0] / len(labels)


def choose(rows: list[dict], model: str, tolerance: float, fd_ratio: float) -> tuple[dict | None, dict | None]:
    """(reference point, chosen point) of ``model``; None where the reference was not measured."""
    mine = [r for r in rows if r["model"] == model]
    ref = next((r for r in mine if (r["solver"], r["nfe"]) == REFERENCE and r["fade"] == 0 and not r.get("rho")), None)
    if ref is None:
        return None, None
    ok = [r for r in mine if r["recognised"] >= ref["recognised"] - tolerance and r["fd"] <= fd_ratio * ref["fd"]]
    return ref, min(ok, key=lambda r: (r["nfe"], r["fd"]))


def render(rows: list[dict], args, ref: dict | None, chosen: dict | None) -> str:
    lines = [header(__file__),
             f"{args.n} clips per digit, guidance {args.guidance:g}, seed {args.seed}, Griffin-Lim, batch {args.batch}; "
             "judged by the evaluation classifier on re-analysed audio (recognised fraction, FD to the real test "
             "clips). NFE = score evaluations per clip (the budget asked for; a 2-evaluation solver may use one "
             f"less). Seconds per clip: one batch of {args.time_clips} clips sampled and vocoded (Griffin-Lim) in a "
             "timing pass after the quality pass, on this CPU.", ""]
    for model in args.models:
        for fade, rho in ((f, r) for f in args.fades for r in args.rhos):
            lines += [f"### {model}, guidance fade sigma {fade:g}, Karras rho {rho or 'of the SDE (7)'}", "",
                      "| solver | " + " | ".join(f"NFE {n}" for n in args.nfe) + " |",
                      "|---|" + "---:|" * len(args.nfe)]
            for solver in args.solvers:
                cells = []
                for nfe in args.nfe:
                    r = next((r for r in rows if (r["model"], r["solver"], r["nfe_budget"], r["fade"], r.get("rho")) ==
                              (model, solver, nfe, fade, rho)), None)
                    cells.append("" if r is None else f"{r['recognised']:.2f} / {r['fd']:.1f} / {r['seconds_per_clip']:.2f} s")
                lines.append(f"| {solver} | " + " | ".join(cells) + " |")
            lines.append("")
    lines.append("Cells: recognised / FD / seconds per clip. FD floor (two halves of the real test set): "
                 + ", ".join(sorted({f"{r['fd_floor']:.1f}" for r in rows})) + ".")
    if args.earlier:
        lines += ["", f"The choice also weighs the points of {args.earlier} (the reference among them)."]
    if ref and chosen:
        lines += ["", f"Reference ({args.models[0]}): {REFERENCE[0]} at {REFERENCE[1]} NFE, recognised "
                      f"{ref['recognised']:.3f}, FD {ref['fd']:.1f}. Target: recognised >= reference - {args.tolerance:g}, "
                      f"FD <= {args.fd_ratio:g} x reference.",
                  f"Chosen: {chosen['solver']}, {chosen['steps']} steps ({chosen['nfe']} NFE), fade {chosen['fade']:g}, "
                  f"rho {chosen.get('rho') or 'of the SDE'}: "
                  f"recognised {chosen['recognised']:.3f}, FD {chosen['fd']:.1f} ({chosen['fd'] / ref['fd']:.2f} x)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], args, path: str) -> None:
    """Recognised fraction and FD against NFE, one line per solver, one row of panels per model."""
    panels = []
    for model in args.models:
        series = {"recognised": [], "fd": []}
        for solver in args.solvers:
            pts = sorted((r["nfe"], r["recognised"], r["fd"]) for r in rows
                         if r["model"] == model and r["solver"] == solver and r["fade"] == args.fades[0]
                         and r.get("rho") == args.rhos[0])
            if pts:
                nfe, rec, fd = zip(*pts)
                series["recognised"].append(Series(solver, nfe, rec))
                series["fd"].append(Series(solver, nfe, fd))
        x = "score evaluations per clip (NFE)"
        panels += [Panel(f"{model}: recognised fraction", x, series["recognised"], xlog=10, xticks=args.nfe),
                   Panel(f"{model}: Frechet distance (log scale)", x, series["fd"], xlog=10, ylog=True, xticks=args.nfe)]
    save_plot(path, panels, columns=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--models", type=_csv(str), default=["tapdiff", "two-model"])
    p.add_argument("--solvers", type=_csv(str), default=sorted(SOLVERS))
    p.add_argument("--nfe", type=_csv(int), default=[10, 15, 20, 30, 50, 100])
    p.add_argument("--fades", type=_csv(float), default=[0.0], help="guidance fade sigmas to try")
    p.add_argument("--rhos", type=lambda t: [None if v in ("", "sde") else float(v) for v in t.split(",")],
                   default=[None], help="Karras schedule rho values to try (sde: the SDE's own)")
    p.add_argument("-n", type=int, default=10, help="clips per digit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--time-clips", type=int, default=16, help="clips of the timing pass per point")
    p.add_argument("--tolerance", type=float, default=0.02, help="recognised fraction may be this much below the reference")
    p.add_argument("--fd-ratio", type=float, default=1.1, help="FD may be this many times the reference's")
    p.add_argument("--cache", default=None, help="JSON file of finished points, to resume an interrupted run")
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None, help="every point, with the run's provenance")
    p.add_argument("--plot", default=None, help="PNG of recognised fraction and FD against NFE (needs matplotlib)")
    p.add_argument("--write", action="store_true", help="record the choice in the checkpoint's config.json")
    p.add_argument("--earlier", default=None,
                   help="JSON of an earlier sweep (--json) whose points also compete for the choice (and give the "
                        "reference when this sweep does not measure it)")
    args = p.parse_args()
    record(__file__)  # provenance of the code that measures, before anything runs
    for s in args.solvers:
        if s not in SOLVERS:
            p.error(f"unknown solver {s!r}; expected some of {sorted(SOLVERS)}")
    cache = {}
    if args.cache and Path(args.cache).exists():
        cache = json.loads(Path(args.cache).read_text())
    rows = sweep(args, cache)
    time_points(rows, args)
    earlier = json.loads(Path(args.earlier).read_text())["points"] if args.earlier else []
    ref, chosen = choose(rows + earlier, args.models[0], args.tolerance, args.fd_ratio)
    emit(render(rows, args, ref, chosen), args.out)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps({**record(__file__), "points": rows}, indent=1) + "\n").encode())
    if args.plot:
        plot(rows, args, args.plot)
    if args.write:
        if chosen is None:
            raise SystemExit(f"--write needs the reference point ({REFERENCE[0]} at {REFERENCE[1]} NFE) in the sweep")
        bundle_cfg = load_bundle(args.checkpoint, model=None).config
        update_config(args.checkpoint, {"sampling": {
            "sampler": chosen["solver"], "steps": chosen["steps"], "guidance_fade_sigma": chosen["fade"],
            **({"rho": chosen["rho"]} if chosen.get("rho") else {}),
            "vocoder": bundle_cfg.get("sampling", {}).get("vocoder", "griffin-lim"), "chosen_by": command(__file__),
            "recognised": chosen["recognised"], "fd": chosen["fd"],
            **({"models": bundle_cfg["sampling"]["models"]} if "models" in bundle_cfg.get("sampling", {}) else {})}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
