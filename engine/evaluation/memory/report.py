"""The memory report: planned (``graph_plan``, ``live_tensors``) against measured (``process_probe``) for every
model x runtime x batch, whether they agree within a stated margin (``compare``), the markdown table (``render``)
and the command ``python -m engine.evaluation.memory --checkpoint CKPT --out DIR``."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from . import MIB
from .graph_plan import ort_optimised_graph, planned_onnx, planned_ort_as_run, score_graph
from .live_tensors import planned_torch
from ..render import table
from .process_probe import RUNTIME_NAMES, RUNTIMES, Runtime, measured_repeated

logger = logging.getLogger(__name__)


# Measured over planned. Below: the process must hold the planned live bytes, less what a runtime saves by
# reusing a dying input's buffer for its output, which the liveness rule does not: LOW. Above: a proportional
# allowance (allocator and page rounding) and a fixed one for what the first evaluation builds once whatever
# the batch (kernel code paged in, oneDNN / MLAS state, thread pools), which the batch-1 rows measure.
MARGIN = {"low": 0.9, "high": 1.25, "fixed_mib": 32.0}


def compare(planned_mib: float | None, measured_mib: float | None, margin: dict = MARGIN) -> dict:
    """Whether ``measured_mib`` lies in [low x planned, high x planned + fixed], and measured / planned."""
    if planned_mib is None or measured_mib is None:
        return {"agree": None, "ratio": None, "low_mib": None, "high_mib": None}
    lo, hi = margin["low"] * planned_mib, margin["high"] * planned_mib + margin["fixed_mib"]
    return {"agree": lo <= measured_mib <= hi, "ratio": measured_mib / planned_mib if planned_mib else None,
            "low_mib": lo, "high_mib": hi}


def why_not(runtime: "Runtime", c: dict, as_run: dict | None, measured_mib: float) -> str:
    """Why a measured figure falls outside the margin around its plan, by the mechanism of this runtime that
    the report's own rows single out (each onnxruntime setting is measured on its own), not a guess per row."""
    if c["agree"] is None or c["agree"]:
        return ""
    below = measured_mib < c["low_mib"]
    if runtime.backend == "onnxruntime":
        if as_run is not None and as_run["agree"]:
            return ("onnxruntime runs its optimised graph, whose fused nodes (QuickGelu, NCHWc Conv, FusedMatMul) "
                    "leave out tensors the exported graph holds; measured agrees with that graph's plan")
        if below:
            return "below the plan: onnxruntime reuses dying inputs' buffers in place"
        return {(True, True): "the arena keeps the first evaluation's blocks and extends again (doubling regions) for "
                              "the memory pattern's one block on the second: both stay resident",
                (True, False): "the arena keeps every block it took and extends in doubling regions, so freed "
                               "tensors' blocks are not reused as tightly as the plan",
                (False, True): "the memory pattern's one block, laid out by onnxruntime from the first evaluation, "
                               "exceeds the live peak"}.get((runtime.arena, runtime.pattern), "above the plan's margin")
    if below:
        return "below the plan: pages already resident before the evaluation were reused"
    return "above the plan's margin: work beyond the allocator's live bytes"


# -------------------------------------------------------------------------------------------------- report


def memory_report(checkpoint, models=("tapdiff", "two-model"), batches=(1, 16, 64), guidance: float = 3.0,
                  processes: int = 3, threads: int = 1, runtimes=RUNTIMES, artifacts=None) -> dict:
    """Planned and measured figures of every model x runtime x batch, compared, with where each peak sits (each
    row logged at info as it is measured)."""
    from ...bundle import load_bundle
    from ...diffusion.score_model import score_model

    torch.set_num_threads(threads)
    rows, plans = [], {}
    for model_name in models:
        bundle = load_bundle(checkpoint, model=model_name)
        model = score_model(bundle).eval()
        graph = score_graph(bundle, guidance > 0, artifacts, model)
        optimised = ort_optimised_graph(graph, threads)
        for batch in batches:
            exported = planned_onnx(bundle, batch, guidance, artifacts, model)
            as_run = planned_ort_as_run(bundle, batch, guidance, artifacts, model, optimised)
            eager = planned_torch(bundle, batch, guidance, model)
            plans[f"{model_name}/{batch}"] = {"model": model_name, "batch": batch, "onnx": exported.summary(),
                                              "ort_optimised": as_run.summary(), "torch": eager}
            logger.info(f"memory: {model_name} batch {batch}: planned, exported graph {exported.peak_mib:.1f} MiB "
                        f"({exported.n_fallback} shapes from a run), onnxruntime's graph {as_run.peak_mib:.1f} MiB, "
                        f"torch allocator {eager['peak_mib']:.1f} MiB (op outputs {eager['tensors_peak_mib']:.1f})")
            for rt in runtimes:
                if rt.backend == "torch":
                    planned = planned_run = eager["peak_mib"]
                    source = source_run = "torch allocator (profiler)"
                else:
                    planned, planned_run = exported.peak_mib, as_run.peak_mib
                    source, source_run = "exported ONNX graph, liveness", "onnxruntime's optimised graph, liveness"
                m = measured_repeated(checkpoint, model_name, rt, batch, guidance, processes, threads=threads,
                                      artifacts=artifacts, graph=graph if rt.backend == "onnxruntime" else None)
                c, c_run = compare(planned, m.get("median_mib")), compare(planned_run, m.get("median_mib"))
                rows.append({"model": model_name, "runtime": rt.label, "backend": rt.backend, "arena": rt.arena,
                             "pattern": rt.pattern, "batch": batch, "guidance": guidance,
                             "planned_mib": planned, "planned_source": source,
                             "planned_as_run_mib": planned_run, "planned_as_run_source": source_run,
                             "measured_mib": m.get("median_mib"),
                             "measured": {k: v for k, v in m.items() if k != "runs"},
                             "measured_runs_mib": [r["measured_bytes"] / MIB for r in m["runs"]
                                                   if r.get("measured_bytes") is not None],
                             **c, "agree_as_run": c_run["agree"], "ratio_as_run": c_run["ratio"],
                             "why": why_not(rt, c, c_run, m.get("median_mib") or 0.0),
                             "why_as_run": why_not(rt, c_run, None, m.get("median_mib") or 0.0)})
                logger.info(f"memory:   {rt.label}: measured {_f(m.get('median_mib'))} MiB "
                            f"[{_f(m.get('min_mib'))}-{_f(m.get('max_mib'))}], agree {c['agree']} "
                            f"(as run {c_run['agree']})")
    return {"checkpoint": str(checkpoint), "models": list(models), "batches": list(batches), "guidance": guidance,
            "processes": processes, "threads": threads, "margin": MARGIN, "rows": rows, "plans": plans,
            "ratios": ratios(rows, models)}


def ratios(rows: list[dict], models) -> list[dict]:
    """The first model over the second, per runtime and batch, by each figure."""
    if len(models) < 2:
        return []
    a, b = models[0], models[1]
    by = {(r["model"], r["runtime"], r["batch"]): r for r in rows}

    def div(x, y):
        return x / y if x is not None and y else None

    return [{"runtime": rt, "batch": batch, "planned": div(r["planned_mib"], o["planned_mib"]),
             "planned_as_run": div(r["planned_as_run_mib"], o["planned_as_run_mib"]),
             "measured": div(r["measured_mib"], o["measured_mib"])}
            for (m, rt, batch), r in by.items() if m == a and (o := by.get((b, rt, batch))) is not None]


def _f(v, spec=".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def _verdict(agree, why: str) -> str:
    return "n/a" if agree is None else ("yes" if agree else f"**no**: {why}")


def render(report: dict, header: str) -> str:
    m = report["margin"]
    lines = [header, f"One score evaluation, guidance {report['guidance']:g}, {report['threads']} thread(s). "
             "MiB = 2^20 bytes. Two figures, named by what they measure:", "",
             "- **live activations (planned)**: the peak of live activation bytes, weights and the graph inputs "
             "apart. onnxruntime rows: liveness over the exported ONNX graph, the graph every runtime is given "
             "(batch fixed, every shape resolved; each tensor alive from the node that makes it to its last reader, "
             "in node order; machine-independent); *as run*: the same rule over onnxruntime's optimised graph for "
             "this CPU (fusions, NCHWc blocking). torch rows: the peak of bytes live in c10's CPU allocator during "
             "an evaluation (the profiler's allocation events; kernels' temporaries in it), both columns.",
             "- **process peak over pre-evaluation state (measured)**: the peak resident set (VmHWM, reset just "
             "before) over the resident set once the model and session are built, across the first 2 evaluations "
             f"(so what the first one makes a pool or arena take is counted), a fresh process each; median "
             f"[min-max] over {report['processes']} processes. Resident pages: what is touched, not what is reserved.",
             f"- **agree?**: measured within [{m['low']:g} x planned, {m['high']:g} x planned + {m['fixed_mib']:g} MiB] "
             "(the fixed part: what a first evaluation sets up once at any batch); first against the exported "
             "graph's plan, then against the plan as run.", ""]
    lines += table(["system", "backend", "batch", "planned MiB", "planned as run MiB", "measured MiB median [min-max]",
                    "measured / planned", "agree?", "agree as run?"],
                   [[r["model"], r["runtime"], r["batch"], _f(r["planned_mib"]), _f(r["planned_as_run_mib"]),
                     f"n/a ({r['measured'].get('reason', '')})" if r["measured_mib"] is None else
                     f"{r['measured']['median_mib']:.1f} [{r['measured']['min_mib']:.1f}-{r['measured']['max_mib']:.1f}]",
                     _f(r["ratio"], ".2f"), _verdict(r["agree"], r["why"]), _verdict(r["agree_as_run"], r["why_as_run"])]
                    for r in report["rows"]], "llrrrlrll")
    if report["ratios"]:
        a, b = report["models"][:2]
        lines += ["", f"#### {a} / {b}, by each figure", ""]
        lines += table(["backend", "batch", "planned", "planned as run", "measured"],
                       [[q["runtime"], q["batch"], _f(q["planned"], ".2f"), _f(q["planned_as_run"], ".2f"),
                         _f(q["measured"], ".2f")] for q in report["ratios"]])
    lines += ["", "#### The plans", ""]
    lines += table(["system", "batch", "exported graph: nodes / activations / shapes from a run", "planned MiB",
                    "onnxruntime's graph: nodes / shapes from a run", "as run MiB", "weights MiB", "torch allocator MiB",
                    "torch op outputs MiB"],
                   [[p["model"], p["batch"], f"{p['onnx']['n_nodes']} / {p['onnx']['n_tensors']} / {p['onnx']['n_fallback']}",
                     f"{p['onnx']['peak_mib']:.1f}", f"{p['ort_optimised']['n_nodes']} / {p['ort_optimised']['n_fallback']}",
                     f"{p['ort_optimised']['peak_mib']:.1f}", f"{p['onnx']['weights_mib']:.1f}",
                     f"{p['torch']['peak_mib']:.1f}", f"{p['torch']['tensors_peak_mib']:.1f}"]
                    for p in report["plans"].values()], "lrlrlrrrr")
    lines += ["", "#### Where the peak sits", ""]

    def alive(plan):
        return "; ".join(f"`{a['name']}` ({a['op']}, {'x'.join(map(str, a['shape']))}, {a['bytes'] / MIB:.1f} MiB)"
                         for a in plan["alive_at_peak"][:5])

    for p in report["plans"].values():
        o, r, t = p["onnx"], p["ort_optimised"], p["torch"]
        lines += [f"- **{p['model']}, batch {p['batch']}**",
                  f"  - exported graph: at node {o['peak_node']} of {o['n_nodes']} (`{o['peak_op']}` "
                  f"{o['peak_node_name']}), {o['peak_mib']:.1f} MiB alive; largest: {alive(o)}",
                  f"  - onnxruntime's graph: at node {r['peak_node']} of {r['n_nodes']} (`{r['peak_op']}`), "
                  f"{r['peak_mib']:.1f} MiB; largest: {alive(r)}",
                  f"  - eager torch (op outputs, {t['tensors_peak_mib']:.1f} MiB): at `{t['tensors_peak_op']}`; largest: "
                  + "; ".join(f"{a['op']} {'x'.join(map(str, a['shape']))} ({a['bytes'] / MIB:.1f} MiB)"
                              for a in t["tensors_alive_at_peak"][:5])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m engine.evaluation.memory",
                                description="Planned and measured memory of one score evaluation, per model, runtime and batch.")
    p.add_argument("--checkpoint", default="engine/checkpoints/fsdd")
    p.add_argument("--models", default="tapdiff,two-model")
    p.add_argument("--batch", default="1,16,64")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--processes", type=int, default=3, help="fresh processes per measured figure")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runtimes", default=",".join(RUNTIME_NAMES),
                   help="measured runtimes: torch, ort (arena and memory pattern on, the engine's setting), ort-off "
                        "(both off), ort-arena (arena only), ort-pattern (pattern only)")
    p.add_argument("--artifacts", default=None)
    p.add_argument("--out", default="memory", help="folder for memory.md and memory.json")
    args = p.parse_args(argv)
    from ...provenance import run_record

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # each row as it is measured
    command = "python -m engine.evaluation.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    record = run_record(command)
    report = memory_report(args.checkpoint, [m for m in args.models.split(",") if m],
                           [int(b) for b in args.batch.split(",")], args.guidance, args.processes, args.threads,
                           runtimes=[RUNTIME_NAMES[r] for r in args.runtimes.split(",") if r], artifacts=args.artifacts)
    sys.stdout.write(f"{write_report(args.out, record, report)}\n")
    return 0


def write_report(out: str | Path, record: dict, report: dict) -> str:
    """``memory.json`` and ``memory.md`` of ``report`` (with its run record) into folder ``out``; the markdown."""
    from ...provenance import markdown_header
    from ...storage.atomic import atomic_write_bytes

    out = Path(out)
    atomic_write_bytes(out / "memory.json", (json.dumps({**record, **report}, indent=1) + "\n").encode())
    text = render(report, markdown_header(record))
    atomic_write_bytes(out / "memory.md", text.encode())
    return text


if __name__ == "__main__":
    sys.exit(main())
