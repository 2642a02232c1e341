"""Memory of one score evaluation as two figures that mean the same thing on every backend.

**Planned** (machine-independent): the peak of live activation bytes of the graph that runs.

- Exported ONNX graph (what onnxruntime and TensorRT are given): the batch axis is fixed (the graph inputs'
  and outputs' ``dim_param`` rewritten to the batch size), shapes come from ``onnx.shape_inference`` with
  data propagation; a tensor whose shape is still unknown gets it from one run of the graph in
  onnxruntime's CPU provider on real inputs (every such tensor made a graph output), and the plan says how
  many needed that. Liveness rule (``liveness``): nodes run in the graph's order; a tensor made by node i
  and last read by node j (j = the end for graph outputs, j = i for a tensor nobody reads) holds its bytes
  while nodes i..j run, both ends included; the peak is the largest sum over one node. Weights
  (initializers, ``Constant`` nodes) and the graph inputs (made before the evaluation) are counted apart.
  With ``alias=True`` the outputs of Reshape / Squeeze / Unsqueeze / Flatten / Identity share their input's
  buffer, as onnxruntime's kernels do; the plain rule (the default) counts them as their own tensors.
- Eager torch: torch's own accounting. ``allocator_peak`` reads every CPU (or CUDA) allocation and free
  that c10's allocator reports to the profiler (``profile_memory=True``, its allocation events with the
  allocator's running total), so kernel-internal temporaries (im2col buffers, attention scratch) are in it;
  this is exact for what goes through c10's allocator and excludes what a library mallocs on its own
  (oneDNN's or MKL's private scratch). ``LiveTensors``, a ``TorchDispatchMode`` that counts the storage of
  every op output from the op that makes it until its last tensor is garbage-collected, gives the part
  held as tensors and where the peak sits (the op, and the tensors alive there).

**Measured** (this machine, this process): the peak of the process's resident set over its state just
before the first evaluation, in a fresh process per measurement (``measured_memory``): the model and the
runtime's session are built, ``VmRSS`` is read, the peak mark ``VmHWM`` is reset to it (``5`` written to
``/proc/self/clear_refs``), then the first evaluations run (so what onnxruntime's arena or torch's pools
take during the first evaluation IS counted), and the peak over the pre-evaluation resident size is the
figure. glibc's mmap threshold is fixed at 128 KiB, so large freed buffers leave the resident set.
onnxruntime runs with its CPU arena and memory pattern on (the engine's setting) or both off. Resident
memory counts touched pages only: an arena's rounded-up but untouched growth does not show. Medians over
several fresh processes (``measured_repeated``). On a GPU (code path only, never run on this project's
machines): device memory in use after minus before (``torch.cuda.mem_get_info``; NVML where importable),
which keeps every runtime's pool, plus torch's allocator peak and TensorRT's context memory.

``compare`` says whether the two agree within a stated margin; ``render`` writes the markdown table;
``python -m engine.evaluation.memory --checkpoint CKPT --out DIR`` writes ``memory.md`` and ``memory.json``.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import InvalidInput

logger = logging.getLogger(__name__)

MIB = 2 ** 20
# onnxruntime's CPU kernels of these ops return a view of input 0 (no new buffer)
ALIAS_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


# ----------------------------------------------------------------------------------------------- planned: ONNX


def dtype_bytes(elem_type: int) -> int:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type).itemsize


def fix_batch(model, batch: int):
    """A copy of ``model`` whose inputs' symbolic dimensions (the score graphs' one dynamic axis is the
    batch) are ``batch``, as are the outputs' dimensions of the same name; the outputs' other symbolic
    dimensions are left for shape inference, and stale value_info is dropped."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    params = {d.dim_param for vi in m.graph.input for d in vi.type.tensor_type.shape.dim if d.HasField("dim_param")}
    for vi, is_input in [(vi, True) for vi in m.graph.input] + [(vi, False) for vi in m.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and (is_input or d.dim_param in params):
                d.Clear()
                d.dim_value = batch
            elif d.HasField("dim_param") or (d.HasField("dim_value") and d.dim_value <= 0):
                d.Clear()  # unknown: inference fills it
    del m.graph.value_info[:]
    return m


def _static(vi) -> tuple[tuple[int, ...], int] | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or t.elem_type == 0 or not t.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return None if any(d < 0 for d in dims) else (dims, t.elem_type)


def _constant_names(graph) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _activation_names(graph) -> list[str]:
    return [o for n in graph.node if n.op_type != "Constant" for o in n.output if o]


@dataclass
class ShapeResolution:
    shapes: dict[str, tuple[tuple[int, ...], int]]  # tensor -> (shape, onnx elem type)
    fallback: list[str]  # tensors whose shape came from running the graph in onnxruntime
    unresolved: list[str]  # still unknown (empty unless the fallback could not run)


def random_feeds(model) -> dict:
    """Inputs for every graph input from its (static) type: normal floats, zeros otherwise."""
    import numpy as np
    from onnx import helper

    g = np.random.default_rng(0)
    feeds = {}
    init = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape, elem = _static(vi)
        dt = helper.tensor_dtype_to_np_dtype(elem)
        feeds[vi.name] = g.standard_normal(shape).astype(dt) if np.issubdtype(dt, np.floating) else np.zeros(shape, dt)
    return feeds


def run_shapes(model, names: list[str], feeds: dict) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shapes and element types of ``names`` from one run of ``model`` in onnxruntime's CPU provider (graph
    optimisations off, so every tensor of the graph exists), each made a graph output."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names if n not in have])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    values = dict(zip(outs, sess.run(outs, feeds)))
    result = {}
    for n in names:
        v = np.asarray(values[n])
        result[n] = (tuple(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
    return result


def resolve_shapes(model, feeds: dict | None = None, fallback: bool = True) -> tuple[object, ShapeResolution]:
    """(model with inferred value_info, the static shape of every tensor): shape inference with data
    propagation first; tensors it leaves unknown from one onnxruntime run on ``feeds`` (default
    ``random_feeds``)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    shapes = {}
    for vi in (*g.input, *g.value_info, *g.output):
        s = _static(vi)
        if s is not None:
            shapes[vi.name] = s
    for i in g.initializer:
        shapes[i.name] = (tuple(i.dims), i.data_type)
    for n in g.node:
        if n.op_type == "Constant":
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None:
                shapes[n.output[0]] = (tuple(t.dims), t.data_type)
    missing = [n for n in _activation_names(g) if n not in shapes]
    ran: list[str] = []
    if missing and fallback:
        shapes.update(run_shapes(inferred, missing, feeds if feeds is not None else random_feeds(model)))
        ran, missing = missing, []
    return inferred, ShapeResolution(shapes, ran, missing)


def _graph_reads(graph) -> set[str]:
    """Names a (sub)graph reads, its own nodes' and nested subgraphs' (outer-scope values included)."""
    out = set()
    for n in graph.node:
        out.update(i for i in n.input if i)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out |= _graph_reads(sub)
    return out


@dataclass
class GraphPlan:
    """Peak live activations of one graph under the liveness rule, and where it sits."""

    peak_bytes: int
    peak_node: int  # index in the graph's node order
    peak_node_name: str
    peak_op: str
    alive_at_peak: list[dict]  # {name, op, bytes, shape}, largest first
    weights_bytes: int  # initializers
    constants_bytes: int  # Constant nodes' outputs
    input_bytes: int  # graph inputs (made before the evaluation, counted apart)
    n_nodes: int
    n_tensors: int  # activations counted
    n_fallback: int = 0  # tensors whose shape came from an onnxruntime run
    n_unresolved: int = 0
    alias: bool = False
    timeline: list[int] = field(default_factory=list, repr=False)  # live bytes at each node

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    def summary(self, top: int = 8) -> dict:
        d = asdict(self)
        d.pop("timeline")
        d["alive_at_peak"] = self.alive_at_peak[:top]
        d["peak_mib"] = self.peak_mib
        d["weights_mib"] = (self.weights_bytes + self.constants_bytes) / MIB
        return d


def liveness(model, shapes: dict[str, tuple[tuple[int, ...], int]], alias: bool = False, top: int = 12) -> GraphPlan:
    """Peak live activation bytes of ``model``'s graph in its node order (the rule: see the module's
    docstring). ``shapes``: every activation's (shape, elem type); a missing one is an error, never a 0."""
    import math

    g = model.graph
    nodes = list(g.node)
    n = len(nodes)
    consts = _constant_names(g)
    inputs = [i.name for i in g.input if i.name not in consts]
    outputs = {o.name for o in g.output}
    producer, op_of = {}, {}
    for k, node in enumerate(nodes):
        if node.op_type == "Constant":
            continue
        for o in node.output:
            if o:
                producer[o], op_of[o] = k, node.op_type
    missing = [t for t in producer if t not in shapes]
    if missing:
        raise InvalidInput(f"{len(missing)} tensors have no resolved shape (first: {missing[:5]})")
    nbytes = {t: math.prod(shapes[t][0]) * dtype_bytes(shapes[t][1]) for t in producer}
    last = dict(producer)
    for k, node in enumerate(nodes):
        reads = {i for i in node.input if i}
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                reads |= _graph_reads(sub)
        for i in reads:
            if i in last:
                last[i] = max(last[i], k)
    for o in outputs:
        if o in last:
            last[o] = n - 1
    # buffers: each tensor its own, or (alias) input 0's buffer for a view op's output
    root = {t: t for t in producer}
    if alias:
        for node in nodes:
            if node.op_type in ALIAS_OPS and node.input and node.input[0] in root and node.output[0] in root:
                root[node.output[0]] = root[node.input[0]]
    span: dict[str, list[int]] = {}
    for t in producer:
        r = root[t]
        while root[r] != r:
            r = root[r]
        root[t] = r
        s = span.setdefault(r, [producer[t], last[t]])
        s[0], s[1] = min(s[0], producer[t]), max(s[1], last[t])
    delta = [0] * (n + 1)
    for r, (a, b) in span.items():
        delta[a] += nbytes[r]
        delta[b + 1] -= nbytes[r]
    timeline, cur = [], 0
    for k in range(n):
        cur += delta[k]
        timeline.append(cur)
    peak = max(timeline) if timeline else 0
    at = timeline.index(peak) if timeline else 0
    alive = sorted(({"name": r, "op": op_of[r], "bytes": nbytes[r], "shape": list(shapes[r][0])}
                    for r, (a, b) in span.items() if a <= at <= b), key=lambda d: -d["bytes"])
    weights = sum(math.prod(i.dims) * dtype_bytes(i.data_type) for i in g.initializer)
    constants = sum(math.prod(shapes[o][0]) * dtype_bytes(shapes[o][1]) for node in nodes if node.op_type == "Constant"
                    for o in node.output if o in shapes)
    input_bytes = sum(math.prod(shapes[i][0]) * dtype_bytes(shapes[i][1]) for i in inputs if i in shapes)
    peak_node = nodes[at] if nodes else None
    return GraphPlan(peak, at, peak_node.name if peak_node else "", peak_node.op_type if peak_node else "",
                     alive[:top], weights, constants, input_bytes, n, len(producer), alias=alias, timeline=timeline)


def plan_graph(model_or_path, batch: int | None = None, feeds: dict | None = None, alias: bool = False) -> GraphPlan:
    """``liveness`` of an ONNX graph (a path or a ModelProto) at a fixed ``batch`` (None: as it is), every
    shape resolved (``resolve_shapes``)."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    if batch is not None:
        model = fix_batch(model, batch)
    inferred, res = resolve_shapes(model, feeds)
    plan = liveness(inferred, res.shapes, alias=alias)
    plan.n_fallback, plan.n_unresolved = len(res.fallback), len(res.unresolved)
    return plan


def score_graph(bundle, guided: bool, cache_dir=None, model=None) -> Path:
    """The exported score graph the onnxruntime backend runs (dynamic batch axis), from the engine's cache."""
    from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs

    from ..diffusion.score_model import score_model

    model = model or score_model(bundle)
    spec = GraphSpec.of(bundle, model, None)
    return ensure_score_graphs(model, bundle, spec, cache_dir or default_cache_dir())[(guided, None)]


def _score_feeds(bundle, model, batch: int, guided: bool) -> dict:
    from export.graphs import SCORE_INPUTS, score_inputs

    return {k: v.numpy() for k, v in zip(SCORE_INPUTS[guided], score_inputs(model, batch, bundle.input_hw, guided))}


def planned_onnx(bundle, batch: int, guidance: float, cache_dir=None, model=None, alias: bool = False) -> GraphPlan:
    """Planned figure of the exported score graph (the one every runtime is given) at ``batch``, shapes
    resolved on the engine's example inputs."""
    from ..diffusion.score_model import score_model

    model = model or score_model(bundle)
    path = score_graph(bundle, guidance > 0, cache_dir, model)
    return plan_graph(path, batch, _score_feeds(bundle, model, batch, guidance > 0), alias)


def ort_optimised_graph(path, threads: int = 1):
    """The graph onnxruntime's CPU provider runs for the exported graph at ``path``: the session's optimised
    graph (the engine's session options, optimisation "all"; its fused and NCHWc-blocked nodes are chosen
    for this CPU), as a ModelProto with the batch axis still dynamic."""
    import tempfile

    import onnx

    from ..runtimes.ort import DEFAULT_LEVEL, checked_session, session_options

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimised.onnx"
        checked_session(Path(path), session_options(threads, DEFAULT_LEVEL, out), ["CPUExecutionProvider"])
        return onnx.load(str(out))


def planned_ort_as_run(bundle, batch: int, guidance: float, cache_dir=None, model=None, optimised=None,
                       threads: int = 1) -> GraphPlan:
    """``liveness`` of onnxruntime's optimised graph (``ort_optimised_graph``) at ``batch``: what its CPU
    provider holds under the same rule, fusions counted (machine-dependent; its shapes come from a run, as
    onnx's shape inference does not know onnxruntime's contrib operators)."""
    from ..diffusion.score_model import score_model

    model = model or score_model(bundle)
    if optimised is None:
        optimised = ort_optimised_graph(score_graph(bundle, guidance > 0, cache_dir, model), threads)
    return plan_graph(optimised, batch, _score_feeds(bundle, model, batch, guidance > 0))


# ---------------------------------------------------------------------------------------------- planned: torch


class LiveTensors:
    """Live bytes of the storages that op outputs own, from the op that makes one until its last tensor is
    garbage-collected, under a ``TorchDispatchMode``; the peak, the op at it and the tensors alive there.
    A view's storage is its base's: it adds no bytes, and keeps the base's storage alive. Storages that
    existed before (weights, inputs) are never counted."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live: dict[int, list] = {}  # data_ptr -> [bytes, refs, op, shape]
        self.current = self.peak = self.n_storages = 0
        self.peak_op, self.alive_at_peak = "", []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(str(func.overloadpacket.__name__), tree_flatten((args, kwargs))[0], tree_flatten(out)[0])
                return out

        self._mode = _Mode()

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[key]

    def _record(self, op: str, inputs: list, outputs: list) -> None:
        seen_in = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        grew = False
        for t in outputs:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.live:  # a view of (or the same tensor as) a counted storage: one more holder
                self.live[key][1] += 1
            elif key in seen_in or storage.nbytes() == 0:  # a view of a storage made before: not counted
                continue
            else:
                self.live[key] = [storage.nbytes(), 1, op, tuple(t.shape)]
                self.current += storage.nbytes()
                self.n_storages += 1
                grew = True
            weakref.finalize(t, self._release, key)
        if grew and self.current > self.peak:
            self.peak, self.peak_op = self.current, op
            self.alive_at_peak = [(b, o, s) for b, _, o, s in self.live.values()]

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def top(self, n: int = 8) -> list[dict]:
        return [{"op": o, "bytes": b, "shape": list(s)} for b, o, s in sorted(self.alive_at_peak, key=lambda e: -e[0])[:n]]


def allocator_peak(fn: Callable[[], object], device: str = "cpu") -> dict:
    """Peak of bytes allocated through c10's allocator on ``device`` while ``fn`` runs, over what was
    allocated when it started, from the profiler's allocation events (``profile_memory=True``)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == torch.device(device).type:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return {"peak_bytes": peak, "end_bytes": cur, "events": len(events)}


@torch.no_grad()
def planned_torch(bundle, batch: int, guidance: float, model=None, device: str = "cpu") -> dict:
    """Eager torch's figure of one score evaluation (after one warm-up evaluation): the allocator's live-bytes
    peak (``allocator_peak``; on CUDA torch's ``max_memory_allocated``), and the op-output part of it with
    where its peak sits (``LiveTensors``)."""
    from ..diffusion.score_model import score_model
    from .cost import score_eval

    model = model or score_model(bundle).to(device)
    fn, x, s = score_eval(bundle, batch, guidance, model, device)
    fn(x, s)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(x, s)
        alloc = {"peak_bytes": torch.cuda.max_memory_allocated() - before, "source": "torch.cuda.max_memory_allocated"}
    else:
        alloc = {**allocator_peak(lambda: fn(x, s)), "source": "profiler allocation events (c10 CPU allocator)"}
    live = LiveTensors()
    with live:
        out = fn(x, s)
        del out
    return {"peak_bytes": alloc["peak_bytes"], "peak_mib": alloc["peak_bytes"] / MIB, "source": alloc["source"],
            "tensors_peak_bytes": live.peak, "tensors_peak_mib": live.peak / MIB, "tensors_peak_op": live.peak_op,
            "tensors_alive_at_peak": live.top(), "n_storages": live.n_storages,
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


# ------------------------------------------------------------------------------------------------- measured


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
    from ..runtimes.ort import DEFAULT_LEVEL, checked_session, session_options

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
    from ..diffusion.guidance import conditioned
    from ..diffusion.score_model import score_model
    from ..bundle import load_bundle
    from .cost import example_inputs

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
        from ..backends import score_backend

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
    2..``evals`` over the resident set after the first (``cost.peak_step_memory``'s with ``evals`` 4)."""
    if runtime.backend == "onnxruntime" and torch.device(device).type == "cpu" and graph is None:
        from ..bundle import load_bundle

        graph = score_graph(load_bundle(checkpoint, model=model), guidance > 0, artifacts)
    spec = {"checkpoint": str(Path(checkpoint).resolve()), "model": model, "backend": runtime.backend, "arena": runtime.arena,
            "pattern": runtime.pattern, "batch": batch, "guidance": guidance, "threads": threads, "evals": evals,
            "device": device, "artifacts": str(Path(artifacts).resolve()) if artifacts else None,
            "graph": str(Path(graph).resolve()) if graph else None}
    # A fixed mmap threshold stops glibc from raising it as large blocks are freed, so every buffer above
    # 128 KiB is mapped and unmapped on its own and freed buffers leave the resident set.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "engine.evaluation.memory", "--probe", json.dumps(spec)],
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


# ------------------------------------------------------------------------------------------------- compare

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
    from ..bundle import load_bundle
    from ..diffusion.score_model import score_model

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
             "graph's plan, then against the plan as run.", "",
             "| system | backend | batch | planned MiB | planned as run MiB | measured MiB median [min-max] | "
             "measured / planned | agree? | agree as run? |", "|---|---|---:|---:|---:|---|---:|---|---|"]
    for r in report["rows"]:
        ms = r["measured"]
        meas = (f"n/a ({ms.get('reason', '')})" if r["measured_mib"] is None else
                f"{ms['median_mib']:.1f} [{ms['min_mib']:.1f}-{ms['max_mib']:.1f}]")
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {_f(r['planned_mib'])} | "
                     f"{_f(r['planned_as_run_mib'])} | {meas} | {_f(r['ratio'], '.2f')} | "
                     f"{_verdict(r['agree'], r['why'])} | {_verdict(r['agree_as_run'], r['why_as_run'])} |")
    if report["ratios"]:
        a, b = report["models"][:2]
        lines += ["", f"#### {a} / {b}, by each figure", "",
                  "| backend | batch | planned | planned as run | measured |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {q['runtime']} | {q['batch']} | {_f(q['planned'], '.2f')} | {_f(q['planned_as_run'], '.2f')} | "
                  f"{_f(q['measured'], '.2f')} |" for q in report["ratios"]]
    lines += ["", "#### The plans", "",
              "| system | batch | exported graph: nodes / activations / shapes from a run | planned MiB | "
              "onnxruntime's graph: nodes / shapes from a run | as run MiB | weights MiB | torch allocator MiB | "
              "torch op outputs MiB |", "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for p in report["plans"].values():
        o, r, t = p["onnx"], p["ort_optimised"], p["torch"]
        lines.append(f"| {p['model']} | {p['batch']} | {o['n_nodes']} / {o['n_tensors']} / {o['n_fallback']} | "
                     f"{o['peak_mib']:.1f} | {r['n_nodes']} / {r['n_fallback']} | {r['peak_mib']:.1f} | "
                     f"{o['weights_mib']:.1f} | {t['peak_mib']:.1f} | {t['tensors_peak_mib']:.1f} |")
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

    p = argparse.ArgumentParser(prog="python -m engine.evaluation.memory", description=__doc__.split("\n")[0])
    p.add_argument("--probe", help=argparse.SUPPRESS)
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
    if args.probe:  # the answer of one measuring subprocess to the process that started it
        sys.stdout.write(json.dumps(_probe(json.loads(args.probe))) + "\n")
        return 0
    from ..provenance import run_record

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
    from ..provenance import markdown_header
    from ..storage.atomic import atomic_write_bytes

    out = Path(out)
    atomic_write_bytes(out / "memory.json", (json.dumps({**record, **report}, indent=1) + "\n").encode())
    text = render(report, markdown_header(record))
    atomic_write_bytes(out / "memory.md", text.encode())
    return text


if __name__ == "__main__":
    sys.exit(main())
