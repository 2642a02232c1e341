"""Measured memory: the project's one process-memory probe (this machine, a fresh process per measurement).

``measured_memory``: the peak of the process's resident set over its state just before the first evaluation: the
model and the runtime's session are built, ``VmRSS`` is read, the peak mark ``VmHWM`` is reset to it (``5``
written to ``/proc/self/clear_refs``), then the first evaluations run (so what onnxruntime's arena or torch's
pools take during the first evaluation IS counted), and the peak over the pre-evaluation resident size is the
figure; with more than one evaluation, also the peak of the later ones over the process warmed by the first
(``steady_peak_increase_bytes``). glibc's mmap threshold is fixed at 128 KiB, so large freed buffers leave the
resident set. onnxruntime runs with its CPU arena and memory pattern on (the engine's setting) or off. Resident
memory counts touched pages only: an arena's rounded-up but untouched growth does not show. Medians over several
fresh processes: ``measured_repeated``. On a GPU (code path only, never run on this project's machines): device
memory in use after minus before (``torch.cuda.mem_get_info``; NVML where importable), which keeps every
runtime's pool, plus torch's allocator peak and TensorRT's context memory.

Run as ``python -m engine.evaluation.memory.process_probe SPEC_JSON`` it is the measuring child process: it writes
its answer, one JSON line, to stdout.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import MIB


def _status_kib(key: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident size; whether that worked (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm - rss < 1024


def _ort_runner(graph: str, threads: int, arena: bool, pattern: bool):
    from ...runtimes.ort import DEFAULT_LEVEL, checked_session, session_options

    import numpy as np

    so = session_options(threads, DEFAULT_LEVEL)
    so.enable_cpu_mem_arena, so.enable_mem_pattern = arena, pattern
    sess = checked_session(Path(graph), so, ["CPUExecutionProvider"])

    def run(x, sigma, onehot=None, gamma=None):
        feeds = dict(zip(("x_t", "sigma", "onehot", "gamma"), (x, sigma, onehot, gamma) if onehot is not None else (x, sigma)))
        return torch.from_numpy(sess.run(None, {k: np.ascontiguousarray(v.numpy()) for k, v in feeds.items()})[0])

    return run


def _device_used(device: torch.device) -> dict:
    free, total = torch.cuda.mem_get_info(device)
    out = {"mem_get_info_used": total - free}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        out["nvml_used"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    except Exception:  # noqa: BLE001 - NVML absent or failing: mem_get_info alone
        pass
    return out


@torch.no_grad()
def _probe(spec: dict) -> dict:
    """One measurement in this (fresh) process: build, take the pre-evaluation state, evaluate, read the peak."""
    from ...diffusion.guidance import conditioned
    from ...diffusion.score_model import score_model
    from ...bundle import load_bundle
    from ..cost import example_inputs

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    bundle = load_bundle(spec["checkpoint"], model=spec["model"])
    model = score_model(bundle).eval()
    extra: dict = {}
    if spec["backend"] == "torch":
        runner = model.to(device)
    elif spec["backend"] == "onnxruntime" and device.type == "cpu":
        runner = _ort_runner(spec["graph"], spec["threads"], spec["arena"], spec["pattern"])
    else:  # onnxruntime on CUDA, tensorrt: the engine's own runners (their pools are what the delta shows)
        from ...backends import score_backend

        runner = score_backend(spec["backend"], model, bundle, device, spec.get("artifacts"),
                               max_batch=max(64, spec["batch"]))
        if spec["backend"] == "tensorrt":
            extra["tensorrt_context_bytes"] = {str(k): v for k, v in runner.device_memory().items()}
    x, sigma, oh, gamma = (t.to(device) for t in example_inputs(bundle, spec["batch"], spec["guidance"]))
    fn = conditioned(runner, *((oh, gamma) if spec["guidance"] > 0 else (None, None)))
    gc.collect()
    result: dict = {"pid": os.getpid(), **extra}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated, used = torch.cuda.memory_allocated(device), _device_used(device)
        for _ in range(spec["evals"]):
            fn(x, sigma)
        torch.cuda.synchronize(device)
        after = _device_used(device)
        result.update({"measured_bytes": after["mem_get_info_used"] - used["mem_get_info_used"],
                       "source": "device memory in use after minus before (mem_get_info; pools are kept)",
                       "torch_allocator_peak_bytes": torch.cuda.max_memory_allocated(device) - allocated})
        if "nvml_used" in after and "nvml_used" in used:
            result["nvml_delta_bytes"] = after["nvml_used"] - used["nvml_used"]
        return result
    before = _status_kib("VmRSS")
    if not _reset_peak():
        return {**result, "measured_bytes": None, "reason": "the peak-RSS mark cannot be reset here "
                "(/proc/self/clear_refs: Linux only)"}
    fn(x, sigma)
    first_peak, warm = _status_kib("VmHWM"), _status_kib("VmRSS")
    peak = first_peak
    if spec["evals"] > 1:
        _reset_peak()  # the rest from the warmed state: the earlier figure is their peak over it
        for _ in range(spec["evals"] - 1):
            fn(x, sigma)
        later = _status_kib("VmHWM")
        peak = max(first_peak, later)
        result["steady_peak_increase_bytes"] = (later - warm) * 1024
    result.update({"rss_before_kib": before, "peak_rss_kib": peak, "first_eval_peak_kib": first_peak,
                   "measured_bytes": (peak - before) * 1024,
                   "source": "VmHWM over VmRSS before the first evaluation"})
    return result


@dataclass
class Runtime:
    """A runtime as measured: eager torch, or onnxruntime with its CPU arena and memory pattern on or off."""

    backend: str
    arena: bool = True
    pattern: bool = True

    @property
    def label(self) -> str:
        if self.backend != "onnxruntime":
            return self.backend
        return f"onnxruntime, arena {'on' if self.arena else 'off'}, pattern {'on' if self.pattern else 'off'}"


# by name: eager torch; onnxruntime as the engine runs it (arena and pattern on), both off, and each alone
RUNTIME_NAMES = {"torch": Runtime("torch"), "ort": Runtime("onnxruntime", True, True),
                 "ort-off": Runtime("onnxruntime", False, False), "ort-arena": Runtime("onnxruntime", True, False),
                 "ort-pattern": Runtime("onnxruntime", False, True)}
RUNTIMES = tuple(RUNTIME_NAMES.values())


def measured_memory(checkpoint, model: str, runtime: Runtime, batch: int, guidance: float, threads: int = 1,
                    evals: int = 2, device: str = "cpu", artifacts=None, graph=None) -> dict:
    """One fresh process's measured figure (``_probe``). ``graph``: the exported graph for onnxruntime on a CPU
    (default: the engine's cached one); ``evals``: evaluations counted from the pre-evaluation state (the
    first included; at least 2, so a memory pattern built by the first run is counted on the second). On a
    CPU it also gives ``steady_peak_increase_bytes``, the earlier figure: the resident-set peak of evaluations
    2..``evals`` over the resident set after the first."""
    if runtime.backend == "onnxruntime" and torch.device(device).type == "cpu" and graph is None:
        from ...bundle import load_bundle

        from .graph_plan import score_graph

        graph = score_graph(load_bundle(checkpoint, model=model), guidance > 0, artifacts)
    spec = {"checkpoint": str(Path(checkpoint).resolve()), "model": model, "backend": runtime.backend, "arena": runtime.arena,
            "pattern": runtime.pattern, "batch": batch, "guidance": guidance, "threads": threads, "evals": evals,
            "device": device, "artifacts": str(Path(artifacts).resolve()) if artifacts else None,
            "graph": str(Path(graph).resolve()) if graph else None}
    # A fixed mmap threshold stops glibc from raising it as large blocks are freed, so every buffer above
    # 128 KiB is mapped and unmapped on its own and freed buffers leave the resident set.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "engine.evaluation.memory.process_probe", json.dumps(spec)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured_repeated(checkpoint, model: str, runtime: Runtime, batch: int, guidance: float, processes: int = 3,
                      **kw) -> dict:
    """Median, min and max of ``measured_memory`` over ``processes`` fresh processes (n/a with the reason
    when the figure cannot be taken here)."""
    runs = [measured_memory(checkpoint, model, runtime, batch, guidance, **kw) for _ in range(processes)]
    values = [r["measured_bytes"] for r in runs if r.get("measured_bytes") is not None]
    if not values:
        return {"median_mib": None, "reason": runs[0].get("reason", "not measured"), "runs": runs}
    mib = [v / MIB for v in values]
    return {"median_mib": statistics.median(mib), "min_mib": min(mib), "max_mib": max(mib), "n": len(mib),
            "source": runs[0].get("source"), "runs": runs}


def main(argv=None) -> int:
    """The measuring child process: one ``_probe`` of the spec given as JSON, answered as one JSON line."""
    (spec,) = sys.argv[1:] if argv is None else argv
    sys.stdout.write(json.dumps(_probe(json.loads(spec))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
