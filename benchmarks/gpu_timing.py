"""GPU timing: one guided score evaluation, and clips end to end, at batch 1, 16 and 64 for tapdiff and the
two-model pipeline (shipped checkpoint, no dataset), eager vs captured (``Engine(capture=...)``; the score
evaluation captured here in one CUDA graph) and Triton kernels vs the references (``kernels.using_kernels``).

    python benchmarks/gpu_timing.py [--budget-s 240] [--out FILE.md] [--json FILE.json]

A line's modes run in the same interleaved rounds of the one timer (``engine.evaluation.timing``, ``device_sync``):
median [p10, p90], time ratios per round, and the torch-allocator peak of each mode's first call (captures
included; ``engine.evaluation.memory.live_tensors.allocator_peak``: on CUDA the caching allocator's peak statistic). ``RateWatch`` and the rounds' spread flag a disturbed run. ``--budget-s``: repeats share
what is left, lines that no longer fit are cut and named. A captured graph keeps the kernels it was captured with,
so each (model, captured, kernels) mode has an Engine of its own. Without CUDA: a smoke run of seconds (batch 1,
3 rounds, 2 steps), the captured and Triton modes not applicable, with the reason. ``gpu_kit.py`` runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python benchmarks/gpu_timing.py` from a source tree without PYTHONPATH
    sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from engine.evaluation.memory import MIB  # noqa: E402
from engine.evaluation.memory.live_tensors import allocator_peak  # noqa: E402
from engine.evaluation.render import spread_cell, table  # noqa: E402
from engine.evaluation.timing import (RateWatch, device_sync, interleaved, paired_ratio, quantiles,  # noqa: E402
                                      spread_too_wide, warning_line)

MODELS, BATCHES, GUIDANCE = ("tapdiff", "two-model"), (1, 16, 64), 3.0
MODES = {"eager+triton": (False, "auto"), "captured+triton": (True, "auto"),  # name: (captured, kernel choice)
         "eager+reference": (False, "reference"), "captured+reference": (True, "reference")}
RATIOS = {"captured / eager": ("captured+triton", "eager+triton"),
          "Triton / reference": ("eager+triton", "eager+reference")}
NOT_ON_CPU = {"eager+triton": "the Triton kernels run only on CUDA; on a CPU every dispatch is the reference",
              "captured+triton": "CUDA graphs need CUDA", "captured+reference": "CUDA graphs need CUDA"}


def peak_mib(fn, device: torch.device) -> float:
    """Torch-allocator peak of one call of ``fn`` above what was allocated when it started, in MiB."""
    return allocator_peak(fn, str(device))["peak_bytes"] / MIB


def graphed(fn):
    """``fn`` captured in a CUDA graph (``engine.diffusion.captured.capture_graph``); returns the graph's replay."""
    from engine.diffusion.captured import capture_graph

    graph, _ = capture_graph(fn, torch.cuda.current_device())
    return graph.replay


def in_mode(choice: str, fn):
    """``fn`` run without autograd and with the kernel choice ``choice`` at every call."""
    from kernels import using_kernels

    def call():
        with torch.no_grad(), using_kernels(choice):
            return fn()
    return call


class Timing:
    def __init__(self, budget_s: float, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.smoke = not self.cuda
        self.deadline = time.time() + budget_s
        self.modes = list(MODES) if self.cuda else ["eager+reference"]
        self._engines: dict = {}

    def engine(self, model: str, captured: bool, choice: str):
        from engine import Engine

        key = (model, captured, choice if captured else None)  # eager dispatches at every call: one Engine serves both
        if key not in self._engines:
            self._engines[key] = Engine(model=model, device=str(self.device), backend="torch", capture=captured)
        return self._engines[key]

    def repeats(self, fns: dict, lines_left: int, low: int, high: int) -> int:
        """Rounds that share what is left of the budget among the lines left, from one timed round."""
        if self.smoke:
            return 3
        one = sum(sum(t) for t in interleaved(fns, 1, warmup=0, sync=device_sync(self.device)).values())
        share = max(self.deadline - time.time() - 10, 0) / max(lines_left, 1)
        return int(min(high, max(low, share // max(one, 1e-9))))

    def score_line(self, model: str, batch: int, lines_left: int) -> dict:
        from engine.evaluation.cost import example_inputs

        fns, peaks = {}, {}
        for mode in self.modes:
            captured, choice = MODES[mode]
            eng = self.engine(model, False, choice)
            args = tuple(t.to(self.device) for t in example_inputs(eng.bundle, batch, GUIDANCE))
            call, made = in_mode(choice, lambda d=eng.torch_denoiser, a=args: d(*a)), []
            peaks[mode] = peak_mib((lambda f=call: made.append(graphed(f))) if captured else call, self.device)
            fns[mode] = made[0] if captured else call
        return self._measure(fns, peaks, lines_left, 5, 40, scale=1e3, line={
            "what": "score evaluation", "model": model, "batch": batch, "unit": "ms"})

    def clips_line(self, model: str, batch: int, lines_left: int) -> dict:
        n, steps = (2, 2) if self.smoke else (batch if batch > 1 else 8, None)
        fns, peaks, out = {}, {}, {}
        for mode in self.modes:
            captured, choice = MODES[mode]
            eng = self.engine(model, captured, choice)
            eng.batch_size = batch
            labels = [eng.labels[k % len(eng.labels)] for k in range(n)]
            clips, spec = eng.request_clips(labels, 1, GUIDANCE, 0), eng.sampler_spec(steps=steps)
            fns[mode] = in_mode(choice, lambda e=eng, c=clips, s=spec: e.sample_clips(c, s))
            # the first call (a captured mode's captures its runner); its clips feed the vocoder's timing
            peaks[mode] = peak_mib(lambda f=fns[mode]: out.setdefault("x", f()), self.device)
        fns["vocoder"] = lambda e=eng, y=labels: e.finish(y, out["x"])  # on the CPU, as generate runs it
        res = self._measure(fns, peaks, lines_left, 5, 12, scale=1e3 / n, line={
            "what": "clips end to end", "model": model, "batch": batch, "clips": n, "sampler": spec.label(),
            "unit": "ms per clip"})
        res["vocoder"] = vocoder = res["modes"].pop("vocoder")
        for q in res["modes"].values():
            q["end_to_end_clips_per_s"] = 1e3 / (q["median"] + vocoder["median"])
        return res

    def _measure(self, fns: dict, peaks: dict, lines_left: int, low: int, high: int, scale: float, line: dict):
        from kernels import backend_for, using_kernels

        line["repeats"] = reps = self.repeats(fns, lines_left, low, high)
        times = interleaved(fns, reps, warmup=1, sync=device_sync(self.device))
        line["modes"] = {}
        for k, t in times.items():
            q = {s: v * scale for s, v in quantiles(t).items()}
            if k in peaks:
                with using_kernels(MODES[k][1]):
                    q.update(peak_mib=peaks[k], dispatch=backend_for(torch.empty(1, device=self.device)))
            line["modes"][k] = q
        line["ratios"] = {name: paired_ratio(times[a], times[b]) for name, (a, b) in RATIOS.items()
                          if a in times and b in times}
        line["times_s"] = times
        return line


def run(budget_s: float = 240.0, device: str | None = None) -> dict:
    """Every line that fits in ``budget_s``, cheapest first (score evaluations, then clips at batch 16, 64, 1)."""
    t0 = time.time()
    tm = Timing(budget_s, device)
    batches = (1,) if tm.smoke else BATCHES
    plan = [("score", m, b) for m in MODELS for b in batches]
    plan += [("clips", m, b) for b in ((1,) if tm.smoke else (16, 64, 1)) for m in MODELS]
    watch = RateWatch(device=tm.device, sizes=(256, 512) if tm.smoke else (1024, 2048, 4096)).start()
    lines, cut, errors = [], [], []
    for i, (what, model, batch) in enumerate(plan):
        if tm.deadline - time.time() < (2 if tm.smoke else 15):
            cut.append(f"{what} {model} batch {batch} ({max(tm.deadline - time.time(), 0):.0f} s of the budget left)")
            continue
        try:
            lines.append((tm.score_line if what == "score" else tm.clips_line)(model, batch, len(plan) - i))
        except Exception as e:  # noqa: BLE001  (one line's failure is reported, the others still run)
            errors.append(f"{what} {model} batch {batch}: {type(e).__name__}: {e}")
        if tm.cuda:
            torch.cuda.empty_cache()
    watch.stop()
    spread = spread_too_wide({f"{ln['model']} {ln['what']} batch {ln['batch']} {k}": q
                              for ln in lines for k, q in ln["modes"].items()})
    problems = watch.problems + spread
    return {"device": str(tm.device), "gpu": torch.cuda.get_device_name(tm.device) if tm.cuda else None,
            "smoke": tm.smoke, "budget_s": budget_s, "wall_s": round(time.time() - t0, 1), "modes": tm.modes,
            "not_applicable": {} if tm.cuda else NOT_ON_CPU, "lines": lines, "cut": cut, "errors": errors,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "threads": torch.get_num_threads(), "rate_gmacs": {"before": watch.before, "after": watch.after},
            "problems": problems, "warning": warning_line(problems)}


def _cell(q: dict | None) -> str:
    if q is None:
        return "-"
    peak = f", {q['peak_mib']:.0f} MiB" if "peak_mib" in q else ""
    return spread_cell(q, spec=".3g") + peak


def render(res: dict) -> str:
    lines = [f"## Timing ({'CPU smoke run: ' if res['smoke'] else ''}{res['gpu'] or res['device']})", "",
             f"{res['wall_s']} s of a {res['budget_s']:g} s budget; {res['threads']} torch threads; TF32 matmul "
             f"{res['tf32']['matmul']}, cuDNN {res['tf32']['cudnn']}. Each cell: median [p10, p90] over interleaved "
             "rounds, torch-allocator peak of the mode's first call (capture included); ratios: of the times, per "
             "round (below 1: the first is faster).", ""]
    lines += [f"- not applicable here: {m} ({why})" for m, why in res["not_applicable"].items()]
    r = res["rate_gmacs"]
    lines += [f"- reference matmul: {r['before']:.4g} GMAC/s at the start, {r['after']:.4g} at the end",
              f"- cut for time: {'; '.join(res['cut'])}" if res["cut"] else "- nothing cut for time", ""]
    lines += [f"**FAILED**: {e}" for e in res["errors"]] + ([""] if res["errors"] else [])
    if res["warning"]:
        lines += [res["warning"], ""]
    ratios = list(RATIOS) if not res["smoke"] else []
    for what, unit in (("score evaluation", "ms"), ("clips end to end", "ms per clip")):
        rows = [ln for ln in res["lines"] if ln["what"] == what]
        if not rows:
            continue
        extra = ["vocoder", "end to end, clips/s"] if what == "clips end to end" else []
        lines += [f"### {'One guided score evaluation' if what == 'score evaluation' else 'Clips end to end'} "
                  f"({unit})", ""]
        cells = []
        for ln in rows:
            row = [ln["model"], f"{ln['batch']}" + (f" ({ln['clips']} clips, {ln['sampler']})" if "clips" in ln else ""),
                   ln["repeats"]]
            row += [_cell(ln["modes"][m]) for m in res["modes"]] + [_cell(ln["ratios"].get(k)) for k in ratios]
            if extra:
                row += [_cell(ln["vocoder"]), ", ".join(f"{m} {q['end_to_end_clips_per_s']:.3g}"
                                                        for m, q in ln["modes"].items())]
            cells.append(row)
        header = ["model", "batch", "rounds", *res["modes"], *ratios, *extra]
        lines += table(header, cells, "l" * len(header))
        lines.append("")
    dispatch = {m: q.get("dispatch") for ln in res["lines"] for m, q in ln["modes"].items() if "dispatch" in q}
    lines.append("Dispatch per mode (kernels.backend_for under its choice): "
                 + ", ".join(f"{m} {d}" for m, d in dispatch.items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget of the whole run (default 240)")
    p.add_argument("--out", help="markdown results file (with the provenance header)")
    p.add_argument("--json", help="the results as JSON")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from report import emit, header  # benchmarks/report.py

    head = header(__file__)
    res = run(args.budget_s)
    if args.json:
        from engine.storage.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(res, indent=1, default=str).encode())
    emit(f"# GPU timing\n\n{head}\n{render(res)}", args.out)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
