"""Where a sampling step's time goes: a few solver steps and the vocoder under torch.profiler, split by the
named stages of ``engine.stages``, with the MACs each stage does and the rate it achieves.

Stages nest (attention inside the decoder, everything inside the step); each stage's time here is
exclusive: its own range minus the stages inside it, so the stages add up to the whole. MACs are counted
by FlopCounterMode's formulas and attributed to the innermost stage running. Times are CPU times of the
ranges; on a GPU they are launch times, and the Chrome trace holds the kernels' device times.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..diffusion import solvers
from ..diffusion.guidance import DEFAULT_GUIDANCE, conditioned
from ..diffusion.noise import clip_seed, draw_noise
from ..diffusion.solvers import get_solver
from ..stages import STAGES, current_stage, stage
from ..storage.atomic import atomic_write, atomic_write_bytes, make_folder
from .cost import _EXTRA_FORMULAS
from .render import table
from .timing import RateWatch, device_sync, interleaved, quantiles, spread_too_wide, warning_line

STEP = "preconditioning, guidance and solver update"


class StageFlopCounter(FlopCounterMode):
    """FlopCounterMode that also keeps the count per innermost ``engine.stages`` stage. Overrides the
    private ``_count_flops`` hook (torch 2.4+); ``tests/test_profile.py`` checks the totals agree."""

    def __init__(self):
        super().__init__(display=False, custom_mapping=_EXTRA_FORMULAS)
        self.by_stage: dict[str | None, int] = defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            self.by_stage[current_stage()] += self.flop_registry[func_packet](*args, **kwargs, out_val=out)
        return super()._count_flops(func_packet, out, args, kwargs)


def _stage_times(events) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Exclusive seconds per stage, and per stage the self time of the operators inside it."""
    stages = set(STAGES)
    exclusive: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def nearest_stage(ev):
        p = ev.cpu_parent
        while p is not None and p.name not in stages:
            p = p.cpu_parent
        return p

    for ev in events:
        if ev.name in stages:
            inner = 0.0
            todo = list(ev.cpu_children)
            while todo:
                c = todo.pop()
                if c.name in stages:
                    inner += c.cpu_time_total
                else:
                    todo.extend(c.cpu_children)
            exclusive[ev.name] += (ev.cpu_time_total - inner) / 1e6
        else:
            owner = nearest_stage(ev)
            ops[owner.name if owner else "outside any stage"][ev.name] += ev.self_cpu_time_total / 1e6
    return dict(exclusive), {k: dict(v) for k, v in ops.items()}


@torch.no_grad()
def profile_sampling(engine, batch: int = 16, steps: int = 5, guidance: float = DEFAULT_GUIDANCE, sampler: str | None = None,
                     out_dir: str | Path | None = None, repeats: int = 3) -> dict:
    """Profile ``steps`` solver steps (from the start of the schedule) of a batch, then the vocoder."""
    spec = engine.sampler_spec(sampler)
    solver = get_solver(spec.solver)
    steps = min(steps, spec.steps)
    sigmas = spec.schedule(engine.bundle.sde)
    table = solver.table(sigmas, dict(spec.options), engine.device)
    host = sigmas.tolist()[:steps + 1]  # the first ``steps`` steps of the schedule
    clips = engine.request_clips([engine.labels[i % len(engine.labels)] for i in range(batch)], 1, guidance, 0)
    labels = [c.label for c in clips]
    fn = conditioned(engine.denoiser_for(spec), *engine.conditioning(clips))
    f = engine.bundle.features
    noise = draw_noise([clip_seed(0, k) for k in range(batch)], (1, f.n_mels, f.frames), spec.steps,
                       solver.noise_per_step, engine.device)

    def run_steps():  # the engine's own loop (engine.diffusion.solvers.run_steps), inside one stage
        with stage(STEP):
            return solvers.run_steps(fn, solver, table, host, noise)

    def run_vocoder(x):
        return engine.finish(labels, x.clamp(-20, 20))

    state = {}
    rounds = {"steps": lambda: state.update(x=run_steps()), "vocoder": lambda: run_vocoder(state["x"])}
    watch = RateWatch(engine.device).start()  # the reference rate now and after the profiled runs
    times = interleaved(rounds, repeats, warmup=1, sync=device_sync(engine.device))
    step_times, voc_times = [t / steps for t in times["steps"]], times["vocoder"]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    runs = []
    for _ in range(repeats):  # the median run per stage: one profiled run is as noisy as one timed run
        with torch.profiler.profile(activities=activities) as prof:
            run_vocoder(run_steps())
        runs.append(_stage_times(prof.events()))
    exclusive = {k: statistics.median(r[0].get(k, 0.0) for r in runs) for k in STAGES}
    ops = runs[len(runs) // 2][1]
    with StageFlopCounter() as counter:
        run_vocoder(run_steps())
    watch.stop()
    rate = watch.after  # the machine's best float32 matmul: what "of matmul rate" compares against
    disturbed = watch.problems + spread_too_wide(
        {"solver step": quantiles(step_times), "vocoder": quantiles(voc_times)})
    rows = []
    for name in STAGES:
        seconds = exclusive.get(name, 0.0)
        per = steps if name != "vocoder" else 1
        macs = counter.by_stage.get(name, 0) // 2
        top = sorted(ops.get(name, {}).items(), key=lambda kv: -kv[1])[:3]
        rows.append({"stage": name, "seconds_per_step": seconds / per, "macs_per_step": macs // per,
                     "gmac_per_s": macs / seconds / 1e9 if seconds > 0 and macs else 0.0,
                     "top_ops": [(k, v / per) for k, v in top]})
    step_rows = [r for r in rows if r["stage"] != "vocoder"]
    total = sum(r["seconds_per_step"] for r in step_rows)
    for r in rows:
        r["share_of_step"] = r["seconds_per_step"] / total if r["stage"] != "vocoder" else None
        r["of_matmul_rate"] = r["gmac_per_s"] / rate
    result = {"model": engine.model_name, "backend": engine.backend, "batch": batch, "steps": steps, "guidance": guidance,
              "sampler": spec.label(), "stages": rows, "profiled_step_s": total,
              "measured_step_s": statistics.median(step_times), "measured_vocoder_s": statistics.median(voc_times),
              "matmul_gmac_per_s": rate, "matmul_gmac_per_s_before": watch.before, "disturbed": disturbed,
              "unattributed_ops": ops.get("outside any stage", {}),
              "stages_sum_over_measured": total / statistics.median(step_times)}
    if out_dir is not None:
        out = make_folder(out_dir)
        atomic_write(out / f"trace_{engine.model_name}.json", lambda tmp: prof.export_chrome_trace(tmp))
        atomic_write_bytes(out / f"profile_{engine.model_name}.json", (json.dumps(result, indent=1) + "\n").encode())
    return result


def render_profile(result: dict) -> str:
    lines = [f"### {result['model']} ({result['backend']}), batch {result['batch']}, guidance {result['guidance']:g}, "
             f"{result['sampler']}: {result['steps']} steps profiled", ""]
    if result.get("disturbed"):
        lines += [warning_line(result["disturbed"]), ""]
    lines += table(["stage", "ms per step", "share", "GMAC per step", "GMAC/s", "of matmul rate",
                    "top operators (ms per step)"],
                   [[r["stage"], f"{1e3 * r['seconds_per_step']:.1f}",
                     "" if r["share_of_step"] is None else f"{r['share_of_step']:.0%}", f"{r['macs_per_step'] / 1e9:.3f}",
                     f"{r['gmac_per_s']:.1f}", f"{r['of_matmul_rate']:.0%}",
                     ", ".join(f"{k} {1e3 * v:.1f}" for k, v in r["top_ops"])] for r in result["stages"]], "lrrrrrl")
    lines += ["", f"Stages of a step sum to {1e3 * result['profiled_step_s']:.1f} ms under the profiler; the same steps "
                  f"without it took {1e3 * result['measured_step_s']:.1f} ms (ratio {result['stages_sum_over_measured']:.2f}). "
                  f"Vocoder row: per batch ({1e3 * result['measured_vocoder_s']:.0f} ms measured). Matmul rate of this "
                  f"machine: {result['matmul_gmac_per_s']:.1f} GMAC/s (float32, best of 512^3, 1024^3, 2048^3). Times are "
                  "medians of the runs, each stage's own (its inner stages excluded)."]
    return "\n".join(lines) + "\n"
