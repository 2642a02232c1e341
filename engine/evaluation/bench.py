"""``tapdiff bench``: memory and latency of the score models against each other, side by side in one run.

Every timing comparison is interleaved: within each round, each configuration (model x backend) runs once
in turn, so machine noise hits all of them alike; ratios (a model against the reference model, a backend
against eager torch) are taken per round and reported as median [p10, p90]. Per configuration: parameters,
MACs per score evaluation (counted on the executed graph), memory of a score evaluation as two figures that
mean the same thing on every backend (``engine.evaluation.memory``): live activations (planned: liveness over
the exported graph for onnxruntime and TensorRT, torch's allocator peak for eager torch) and the process
peak over its pre-evaluation state (measured in a fresh process, the first evaluations included; on GPU the
device memory taken), beside the older peak over the warmed process; latency per score evaluation and per clip
end to end (vocoder included), throughput and real-time factor, from batch 1 up. A model or backend this
machine cannot run is reported as skipped, with the reason.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..api import Engine
from ..audio.datasets import DEFAULT_DATA
from ..bundle import has_model, load_bundle
from .cost import score_eval, step_cost
from .render import spread_cell, table
from .timing import RateWatch, device_sync, interleaved, paired_ratio, quantiles, spread_too_wide, warning_line
from ..errors import InvalidInput

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["tapdiff", "two-model"])
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime"])
    batches: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    guidances: list[float] = field(default_factory=lambda: [0.0, 3.0])
    sampler: str | None = None
    nfe: int | None = None
    repeats: int = 10  # rounds of score evaluations
    gen_repeats: int = 3  # rounds of whole generations
    memory: bool = True
    quality: int = 0  # clips per digit for recognised fraction and FD (0: none)
    data: str = DEFAULT_DATA
    targets: list[dict] = field(default_factory=list)  # load_targets(benchmarks/targets.json): checked in the report
    artifacts: str | None = None
    reference: str = "two-model"  # the model ratios are taken against
    device: str = "cpu"
    vocoder: str | None = None  # the whole generations' vocoder (None: the checkpoint's)


def _engines(checkpoint, cfg: BenchConfig) -> tuple[dict, dict]:
    """(name -> Engine, name -> reason skipped) for every model x backend asked for."""
    engines, skipped = {}, {}
    config = load_bundle(checkpoint, model=None).config
    for model in cfg.models:
        if not has_model(config, model):
            skipped[model] = f"the bundle has no {model} score network"
            continue
        for backend in cfg.backends:
            name = f"{model}/{backend}"
            try:
                engines[name] = Engine(checkpoint, model=model, backend=backend, artifacts=cfg.artifacts,
                                       batch_size=max(cfg.batches), vocoder=cfg.vocoder, device=cfg.device)
            except (ImportError, RuntimeError) as e:  # a missing runtime or GPU: reported, not fatal
                skipped[name] = f"{type(e).__name__}: {e}"
                logger.warning(f"bench: skipping {name}: {e}")
    return engines, skipped


def _ratio_pairs(names: list[str], cfg: BenchConfig) -> list[tuple[str, str]]:
    """(numerator, denominator) pairs: each model against the reference model on the same backend, each
    distilled student against its teacher on the same backend, and each backend against torch for the same
    model."""
    from ..models.registry import score_network_kind

    pairs = []
    for n in names:
        model, backend = n.split("/")
        ref = f"{cfg.reference}/{backend}"
        if model != cfg.reference and ref in names:
            pairs.append((n, ref))
        teacher = f"{score_network_kind(model).teacher}/{backend}"
        if teacher in names and teacher != ref:
            pairs.append((n, teacher))
        if backend != "torch" and f"{model}/torch" in names:
            pairs.append((n, f"{model}/torch"))
    return pairs


@torch.no_grad()
def run_bench(checkpoint, cfg: BenchConfig) -> dict:
    """Every measurement of ``cfg`` on ``checkpoint``'s systems, each row logged (at info) as it is done."""
    engines, skipped = _engines(checkpoint, cfg)
    if not engines:
        raise InvalidInput(f"nothing to benchmark: {skipped}")
    names = list(engines)
    result = {"checkpoint": str(checkpoint), "config": cfg.__dict__, "targets": cfg.targets, "skipped": skipped,
              "systems": {}, "vocoder": ", ".join(sorted({e.vocoder_name for e in engines.values()})),
              "score_eval": [], "generate": [], "quality": {}}
    clip_seconds = next(iter(engines.values())).bundle.features.clip_samples / \
        next(iter(engines.values())).bundle.features.sample_rate
    for name, e in engines.items():
        model_macs = step_cost(e.bundle, e.torch_denoiser)
        result["systems"][name] = {
            "model": e.model_name, "backend": e.backend, "params_total": model_macs.total_params,
            "params_trainable": model_macs.trainable_params, "macs_guided": model_macs.guided_macs,
            "macs_unguided": model_macs.unguided_macs, "weights_sha256": {
                k: v for k, v in e.bundle.config.get("files", {}).items()},
            "sampler": e.sampler_spec(cfg.sampler, nfe=cfg.nfe).label()}
    pairs = _ratio_pairs(names, cfg)
    planned_cache: dict = {}  # (model, guided, batch) -> the exported graph's plan, shared by its runtimes
    with RateWatch(cfg.device) as watch:  # the reference rate at the start and the end of the timed work
        for batch in cfg.batches:
            for gamma in cfg.guidances:
                fns = {}
                for name, e in engines.items():
                    fn, x, s = score_eval(e.bundle, batch, gamma, e.denoiser, e.device)
                    fns[name] = lambda fn=fn, x=x, s=s: fn(x, s)
                times = interleaved(fns, cfg.repeats, sync=device_sync(cfg.device))
                row = {"batch": batch, "guidance": gamma, "times_s": times,
                       "latency_s": {k: quantiles(v) for k, v in times.items()},
                       "ratios": {f"{a} / {b}": paired_ratio(times[a], times[b]) for a, b in pairs}}
                if cfg.memory:
                    memory = {n: _memory(checkpoint, engines[n], batch, gamma, cfg, planned_cache) for n in names}
                    row["peak_mb"] = {n: m["peak_mb"] for n, m in memory.items()}
                    row["planned_mib"] = {n: m["planned_mib"] for n, m in memory.items()}
                    row["measured_mib"] = {n: m["measured_mib"] for n, m in memory.items()}
                    row["memory"] = memory
                result["score_eval"].append(row)
                logger.info(f"bench: score evaluation, batch {batch}, guidance {gamma:g}: " + ", ".join(
                    f"{k} {1e3 * v['median']:.1f} ms" for k, v in row["latency_s"].items()))
        gamma = max(cfg.guidances)
        for batch in cfg.batches:
            fns = {}
            for name, e in engines.items():
                labels = [e.labels[i % len(e.labels)] for i in range(batch)]
                spec = e.sampler_spec(cfg.sampler, nfe=cfg.nfe)
                fns[name] = lambda e=e, labels=labels, spec=spec: e.generate(labels, guidance=gamma, spec=spec)
            times = interleaved(fns, cfg.gen_repeats, sync=device_sync(cfg.device))
            row = {"batch": batch, "guidance": gamma, "times_s": times,
                   "seconds": {k: quantiles(v) for k, v in times.items()},
                   "seconds_per_clip": {k: quantiles([t / batch for t in v]) for k, v in times.items()},
                   "clips_per_s": {k: batch / statistics.median(v) for k, v in times.items()},
                   "rtf": {k: statistics.median(v) / (batch * clip_seconds) for k, v in times.items()},
                   "ratios": {f"{a} / {b}": paired_ratio(times[a], times[b]) for a, b in pairs}}
            result["generate"].append(row)
            logger.info(f"bench: generate {batch} clips: "
                        + ", ".join(f"{k} {v['median']:.2f} s" for k, v in row["seconds"].items()))
    result["scaling"] = scaling(result["generate"], names)
    result["matmul_gmac_per_s"] = {"before": watch.before, "after": watch.after}
    result["disturbed"] = disturbances(result) + watch.problems
    if result["disturbed"]:
        logger.warning(warning_line(result["disturbed"]))
    result["parity"] = parity(engines, cfg)
    if cfg.quality:
        result["quality"] = _quality(checkpoint, engines, cfg)
    result["clip_seconds"] = clip_seconds
    return result


def disturbances(result: dict) -> list[str]:
    """What says this run was disturbed: a timing whose rounds spread too wide, or a batch whose time per clip is
    more than twice batch 1's (batching never costs that much per clip on a quiet machine)."""
    timings = {f"score evaluation of {n}, batch {r['batch']}, guidance {r['guidance']:g}": q
               for r in result["score_eval"] for n, q in r["latency_s"].items()}
    timings.update({f"generate {r['batch']} clips on {n}": q for r in result["generate"] for n, q in r["seconds"].items()})
    problems = spread_too_wide(timings)
    ones = next((r for r in result["generate"] if r["batch"] == 1), None)
    for r in result["generate"] if ones else []:
        for n, q in r["seconds_per_clip"].items():
            if (ratio := q["median"] / ones["seconds_per_clip"][n]["median"]) > 2:
                problems.append(f"{n}: a clip in a batch of {r['batch']} took {ratio:.1f}x a clip alone")
    return problems


def parity(engines: dict, cfg: BenchConfig) -> dict:
    """Each non-torch backend's final mels against eager torch's, same request (2 clips per digit, seed 1)."""
    out = {}
    for name, e in engines.items():
        model, backend = name.split("/")
        ref = engines.get(f"{model}/torch")
        if backend == "torch" or ref is None:
            continue
        spec = e.sampler_spec(cfg.sampler, nfe=cfg.nfe)
        a, b = (x.generate(list(x.labels), n=2, seed=1, spec=spec) for x in (ref, e))
        diff, scale = float((a.mels - b.mels).abs().max()), float(a.mels.abs().max())
        out[name] = {"max_abs_diff": diff, "max_abs": scale, "max_rel_diff": diff / scale, "clips": len(a.labels)}
    return out


def _memory(checkpoint, engine: Engine, batch: int, gamma: float, cfg: BenchConfig, planned_cache: dict) -> dict:
    """One system's memory figures for one score evaluation (``engine.evaluation.memory``):

    - ``planned_mib``, live activations (planned): onnxruntime and TensorRT, liveness over the exported graph
      at this batch (machine-independent); eager torch, the allocator's live-bytes peak of an evaluation;
    - ``measured_mib``, process peak over pre-evaluation state (measured): in a fresh process, the resident
      set's peak (on GPU: device memory in use) over its state once the model and runtime are built, the
      first evaluations included, with the engine's runtime settings; None with ``measured_reason`` where
      this machine cannot take it;
    - ``peak_mb``, the earlier figure, kept, from the same probe: on CPU the resident set's peak of three
      evaluations over the process warmed by one, on GPU torch's allocator peak over the evaluations."""
    from .memory import MIB
    from .memory.graph_plan import planned_onnx
    from .memory.live_tensors import planned_torch
    from .memory.process_probe import Runtime, measured_memory

    out: dict = {}
    if engine.backend == "torch":
        plan = planned_torch(engine.bundle, batch, gamma, engine.torch_denoiser, engine.device)
        out["planned_mib"], out["planned_source"] = plan["peak_mib"], plan["source"]
    else:
        key = (engine.model_name, gamma > 0, batch)
        if key not in planned_cache:
            on_cpu = engine.torch_denoiser if engine.device.type == "cpu" else None  # export needs a CPU model
            planned_cache[key] = planned_onnx(engine.bundle, batch, gamma, cfg.artifacts, on_cpu).peak_mib
        out["planned_mib"], out["planned_source"] = planned_cache[key], "exported ONNX graph, liveness"
    try:
        m = measured_memory(checkpoint, engine.model_name, Runtime(engine.backend), batch, gamma,
                            threads=torch.get_num_threads(), evals=4, device=str(engine.device),
                            artifacts=cfg.artifacts)
    except RuntimeError as e:  # the probe failed: say why rather than report a number
        m = {"measured_bytes": None, "reason": str(e)[-300:]}
    out["measured_mib"] = None if m.get("measured_bytes") is None else m["measured_bytes"] / MIB
    out["measured_source"] = m.get("source")
    if m.get("reason"):
        out["measured_reason"] = m["reason"]
    for k in ("torch_allocator_peak_bytes", "nvml_delta_bytes", "tensorrt_context_bytes"):
        if k in m:
            out[k] = m[k]
    if engine.device.type == "cuda":  # torch's allocator peak over the evaluations, from the same probe
        peak = m.get("torch_allocator_peak_bytes")
    else:  # the resident set's peak of evaluations 2-4 over the process warmed by the first
        peak = m.get("steady_peak_increase_bytes")
    out["peak_mb"] = None if peak is None else peak / MIB
    return out


def scaling(generate_rows: list[dict], names: list[str]) -> dict:
    """Per system: throughput at each batch size, and the smallest batch within 5% of the best throughput
    (where adding clips to a batch stops paying on this machine)."""
    out = {}
    for n in names:
        tp = {r["batch"]: r["clips_per_s"][n] for r in generate_rows}
        best = max(tp.values())
        out[n] = {"clips_per_s": tp, "saturates_at_batch": min(b for b, v in tp.items() if v >= 0.95 * best)}
    return out


def _quality(checkpoint, engines: dict, cfg: BenchConfig) -> dict:
    from .quality import QualityJudge, evaluate_quality

    ev = load_bundle(checkpoint, model=None, need_evaluator=True)
    out = {}
    for name, e in engines.items():
        judge = QualityJudge(ev, cfg.data, e.labels)
        for gamma in cfg.guidances:
            r = evaluate_quality(e, judge, cfg.quality, gamma, 0, e.sampler_spec(cfg.sampler, nfe=cfg.nfe))
            out[f"{name} @ {gamma:g}"] = {"recognised": r.recognised, "fd": r.fd, "fd_floor": r.fd_real_halves,
                                          "nfe": r.nfe, "sampler": r.sampler}
    return out


def load_targets(path) -> list[dict]:
    """The targets a bench run is checked against (``benchmarks/targets.json`` holds the project's): a list
    of {what, metric, at_most, ...}; a file that is not one is refused by name."""
    import json

    try:
        spec = json.loads(Path(path).read_text())
        rows = spec["targets"]
        if not all(isinstance(t, dict) and isinstance(t["what"], str) and t["metric"] in TARGET_METRICS
                   and isinstance(t["at_most"], (int, float)) and isinstance(t.get("bound", ""), str) for t in rows):
            raise InvalidInput("each target needs what, a known metric and at_most (and a bound, if any, is text)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"{path}: not a targets file ({type(e).__name__}: {e})") from e
    return rows


def _generate_seconds(result: dict, t: dict) -> float | None:
    row = next((r for r in result["generate"] if r["batch"] == t["batch"]), None)
    return row["seconds"][t["system"]]["median"] if row and t["system"] in row["seconds"] else None


def _eval_ratio(result: dict, t: dict) -> float | None:
    row = next((r for r in result["score_eval"] if r["batch"] == t["batch"] and r["guidance"] > 0), None)
    return row["ratios"][t["ratio"]]["median"] if row and t["ratio"] in row["ratios"] else None


def _memory_ratio(result: dict, t: dict) -> float | None:
    row = next((r for r in result["score_eval"] if r["batch"] == t["batch"] and r["guidance"] > 0), None)
    mem = (row or {}).get(t["field"], {})
    a, b = mem.get(f"tapdiff/{t['backend']}"), mem.get(f"two-model/{t['backend']}")
    return a / b if a is not None and b else None


def _generate_ratio(result: dict, t: dict) -> float | None:
    row = next((r for r in result["generate"] if r["batch"] == t["batch"]), None)
    return row["ratios"][t["ratio"]]["median"] if row and t["ratio"] in row.get("ratios", {}) else None


TARGET_METRICS = {"generate_seconds": _generate_seconds, "generate_ratio": _generate_ratio, "eval_ratio": _eval_ratio,
                  "memory_ratio": _memory_ratio}


def targets(result: dict, spec: list[dict]) -> list[tuple[str, float, float, bool, str]]:
    """(what, measured, limit, met, what bounds it) of each target in ``spec`` that the run measured; the last
    is the target's "bound" (where it is missed, what limits it and the results file that measures that)."""
    rows = []
    for t in spec:
        v = TARGET_METRICS[t["metric"]](result, t)
        if v is not None:
            rows.append((t["what"], v, t["at_most"], v <= t["at_most"], t.get("bound", "")))
    return rows


def missed_by(measured: float, limit: float) -> str:
    """How far over its limit a missed target is, absolute and relative ("" when met)."""
    return "" if measured <= limit else f"+{measured - limit:.2f} ({measured / limit - 1:.0%} over)"


def render(result: dict, header: str) -> str:
    sy = result["systems"]
    lines = [header, "Latency: median [p10, p90] over interleaved rounds; ratios per round. Memory of one score "
             "evaluation, two figures (engine.evaluation.memory): live activations (planned), MiB: the peak of live "
             "activation bytes, by liveness over the exported ONNX graph (onnxruntime, TensorRT) or torch's allocator "
             "(eager torch); process peak over pre-evaluation state (measured), MiB: the resident set's peak (GPU: "
             "device memory in use) over the process once built, first evaluations included, a fresh process per "
             "configuration; and, as before, the peak over the warmed process, MB (the resident set's increase "
             "during three evaluations over the process warmed by one, same probe, CPU; torch's allocator peak, "
             "GPU: what a warm-up made a runtime keep is not in it).", ""]
    if result.get("disturbed"):
        lines += [warning_line(result["disturbed"]), ""]
    if result["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()), ""]
    lines += table(["system", "params total / trainable", "GMAC per clip guided / unguided", "solver"], [
        [n, f"{s['params_total'] / 1e6:.2f}M / {s['params_trainable'] / 1e6:.2f}M",
         f"{s['macs_guided'] / 1e9:.3f} / {s['macs_unguided'] / 1e9:.3f}", s["sampler"]] for n, s in sy.items()], "llll")

    def fig(r, key, n, spec):
        v = r.get(key, {}).get(n)
        return ("" if key not in r else "n/a") if v is None else format(v, spec)

    lines += ["", "#### One score evaluation", ""]
    lines += table(["batch", "guidance", "system", "ms", "ms per clip", "live activations (planned) MiB",
                    "process peak over pre-evaluation state (measured) MiB", "peak over warmed process MB"],
                   [[r["batch"], f"{r['guidance']:g}", n, spread_cell(q, 1e3), f"{1e3 * q['median'] / r['batch']:.1f}",
                     fig(r, "planned_mib", n, ".1f"), fig(r, "measured_mib", n, ".1f"), fig(r, "peak_mb", n, ".0f")]
                    for r in result["score_eval"] for n, q in r["latency_s"].items()], "rrllrrrr")
    lines += [""] + table(["batch", "guidance", "ratio", "median [p10, p90]"],
                          [[r["batch"], f"{r['guidance']:g}", k, spread_cell(q, spec=".2f")]
                           for r in result["score_eval"] for k, q in r["ratios"].items()], "rrll")
    lines += ["", f"#### Whole generate (guided, vocoder {result.get('vocoder', 'griffin-lim')} included; a clip is "
              f"{result['clip_seconds']:.2f} s of audio)", ""]
    lines += table(["clips", "system", "s", "s per clip", "clips/s", "real-time factor"],
                   [[r["batch"], n, spread_cell(q, spec=".2f"), f"{r['seconds_per_clip'][n]['median']:.3f}",
                     f"{r['clips_per_s'][n]:.2f}", f"{r['rtf'][n]:.3f}"]
                    for r in result["generate"] for n, q in r["seconds"].items()], "rllrrr")
    lines += [""] + table(["clips", "ratio", "median [p10, p90]"],
                          [[r["batch"], k, spread_cell(q, spec=".2f")]
                           for r in result["generate"] for k, q in r["ratios"].items()], "rll")
    lines += ["", "Scaling: " + "; ".join(f"{n} saturates at batch {s['saturates_at_batch']} "
                                          f"({max(s['clips_per_s'].values()):.1f} clips/s)"
                                          for n, s in result["scaling"].items()) + "."]
    if result["parity"]:
        lines += ["", "Parity with eager torch (same request, seed 1, final log-Mels): " + "; ".join(
            f"{k}: max |difference| {p['max_abs_diff']:.1e} on values up to {p['max_abs']:.1f} (relative "
            f"{p['max_rel_diff']:.1e}), {p['clips']} clips" for k, p in result["parity"].items()) + "."]
    if result["quality"]:
        lines += [""] + table(["system @ guidance", "recognised", "FD", "FD floor", "solver"],
                              [[k, f"{q['recognised']:.2f}", f"{q['fd']:.1f}", f"{q['fd_floor']:.1f}",
                                f"{q['sampler']}, {q['nfe']} NFE"] for k, q in result["quality"].items()], "lrrrl")
    t = targets(result, result.get("targets", []))
    if t:
        lines += ["", "#### Targets on this machine", ""]
        lines += table(["target", "measured", "limit", "met", "missed by", "what bounds it"],
                       [[w, f"{v:.2f}", f"{lim:g}", "yes" if ok else "**no**", missed_by(v, lim), "" if ok else bound]
                        for w, v, lim, ok, bound in t], "lrrlll")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """Two panels against batch size: end-to-end seconds per clip (median, p10-p90 bars) and MiB per guided score
    evaluation (measured solid, planned dashed); one colour per model, one marker per backend, one legend beside
    the panels (``render.save_plot``)."""
    from .render import Panel, Series, save_plot

    names = list(result["systems"])
    models = list(dict.fromkeys(n.split("/")[0] for n in names))
    backends = list(dict.fromkeys(n.split("/")[-1] for n in names))
    gen = result["generate"]
    ev = [r for r in result["score_eval"]
          if r["guidance"] == max(result["config"]["guidances"]) and "measured_mib" in r]
    seconds, memory = [], []
    for n in names:
        model, backend = n.split("/")[0], n.split("/")[-1]
        style = {"color": f"C{models.index(model) % 10}", "marker": "osD^v"[backends.index(backend) % 5]}
        q = [r["seconds_per_clip"][n] for r in gen]
        seconds.append(Series(n, [r["batch"] for r in gen], [x["median"] for x in q], [x["p10"] for x in q],
                              [x["p90"] for x in q], style))
        for key, extra in (("measured_mib", {}), ("planned_mib", {"linestyle": "--", "alpha": 0.6})):
            memory.append(Series(None, [r["batch"] for r in ev], [r[key].get(n) for r in ev], style={**style, **extra}))
    batches = sorted({r["batch"] for r in gen + ev})
    panels = [Panel("seconds per clip, end to end (median, p10-p90)", "clips per batch", seconds, xlog=2, ylog=True,
                    xticks=batches)]
    if ev:
        panels.append(Panel("MiB per guided score evaluation (solid measured, dashed planned)", "clips per batch",
                            memory, xlog=2, ylog=True, xticks=batches))
    save_plot(path, panels)
