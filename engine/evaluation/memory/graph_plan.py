"""Planned memory of an exported ONNX graph (what onnxruntime and TensorRT are given): the peak of live
activation bytes, machine-independent.

The batch axis is fixed (the graph inputs' and outputs' ``dim_param`` rewritten to the batch size), shapes come
from ``onnx.shape_inference`` with data propagation; a tensor whose shape is still unknown gets it from one run of
the graph in onnxruntime's CPU provider on real inputs (every such tensor made a graph output), and the plan says
how many needed that. Liveness rule (``liveness``): nodes run in the graph's order; a tensor made by node i and
last read by node j (j = the end for graph outputs, j = i for a tensor nobody reads) holds its bytes while nodes
i..j run, both ends included; the peak is the largest sum over one node. Weights (initializers, ``Constant``
nodes) and the graph inputs (made before the evaluation) are counted apart. With ``alias=True`` the outputs of
Reshape / Squeeze / Unsqueeze / Flatten / Identity share their input's buffer, as onnxruntime's kernels do; the
plain rule (the default) counts them as their own tensors.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import InvalidInput
from . import MIB

# onnxruntime's CPU kernels of these ops return a view of input 0 (no new buffer)
ALIAS_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


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

    from ...diffusion.score_model import score_model

    model = model or score_model(bundle)
    spec = GraphSpec.of(bundle, model, None)
    return ensure_score_graphs(model, bundle, spec, cache_dir or default_cache_dir())[(guided, None)]


def _score_feeds(bundle, model, batch: int, guided: bool) -> dict:
    from export.graphs import SCORE_INPUTS, score_inputs

    return {k: v.numpy() for k, v in zip(SCORE_INPUTS[guided], score_inputs(model, batch, bundle.input_hw, guided))}


def planned_onnx(bundle, batch: int, guidance: float, cache_dir=None, model=None, alias: bool = False) -> GraphPlan:
    """Planned figure of the exported score graph (the one every runtime is given) at ``batch``, shapes
    resolved on the engine's example inputs."""
    from ...diffusion.score_model import score_model

    model = model or score_model(bundle)
    path = score_graph(bundle, guidance > 0, cache_dir, model)
    return plan_graph(path, batch, _score_feeds(bundle, model, batch, guidance > 0), alias)


def ort_optimised_graph(path, threads: int = 1):
    """The graph onnxruntime's CPU provider runs for the exported graph at ``path``: the session's optimised
    graph (the engine's session options, optimisation "all"; its fused and NCHWc-blocked nodes are chosen
    for this CPU), as a ModelProto with the batch axis still dynamic."""
    import tempfile

    import onnx

    from ...runtimes.ort import DEFAULT_LEVEL, checked_session, session_options

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimised.onnx"
        checked_session(Path(path), session_options(threads, DEFAULT_LEVEL, out), ["CPUExecutionProvider"])
        return onnx.load(str(out))


def planned_ort_as_run(bundle, batch: int, guidance: float, cache_dir=None, model=None, optimised=None,
                       threads: int = 1) -> GraphPlan:
    """``liveness`` of onnxruntime's optimised graph (``ort_optimised_graph``) at ``batch``: what its CPU
    provider holds under the same rule, fusions counted (machine-dependent; its shapes come from a run, as
    onnx's shape inference does not know onnxruntime's contrib operators)."""
    from ...diffusion.score_model import score_model

    model = model or score_model(bundle)
    if optimised is None:
        optimised = ort_optimised_graph(score_graph(bundle, guidance > 0, cache_dir, model), threads)
    return plan_graph(optimised, batch, _score_feeds(bundle, model, batch, guidance > 0))
