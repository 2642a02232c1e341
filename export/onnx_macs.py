"""Multiply-accumulates of a traced ONNX graph, read from its operators and the shapes of one run.

An independent count from the exported graph (what TensorRT would build), to check the FlopCounterMode
count of the eager code: Conv, ConvTranspose, MatMul, Gemm and two-operand Einsum, the operators that hold
nearly all the arithmetic. Elementwise operators, reductions and Softmax are not counted (nor are they by
FlopCounterMode).
"""
from __future__ import annotations

import os
from math import prod

from engine.errors import InvalidInput


def _shapes(model, feeds: dict) -> dict[str, list[int]]:
    """Every tensor's shape, from running the graph once in onnxruntime with all node outputs exposed
    (static shape inference cannot follow some reshapes of the exported adjoint)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    names = [n for node in probe.graph.node for n in node.output if n and n not in known]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}  # the exporter drops unused inputs
    outs = sess.run(None, feeds)
    shapes = {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), outs)}
    shapes.update({k: list(v.shape) for k, v in feeds.items()})
    shapes.update({t.name: list(t.dims) for t in probe.graph.initializer})
    return shapes


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _einsum_macs(equation: str, a: list[int], b: list[int]) -> int:
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for letters, shape in zip(lhs, (a, b)):
        sizes.update(zip(letters, shape))
    return prod(sizes.values())


def node_macs(node, shapes: dict[str, list[int]]) -> int:
    """MACs of one node, or 0 for operators that are not counted."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"):
        return 0
    try:
        ins = [shapes[n] for n in node.input[:2]]
        out = shapes[node.output[0]]
    except KeyError as e:
        raise InvalidInput(f"{op} node {node.name!r}: no shape for {e}") from None
    if op == "Conv":  # weight (C_out, C_in / g, k...): each output element sums C_in / g * k... products
        return prod(out) * prod(ins[1][1:])
    if op == "ConvTranspose":  # weight (C_in, C_out / g, k...): each input element scatters C_out / g * k...
        return prod(ins[0]) * prod(ins[1][1:])
    if op == "Gemm":
        k = ins[0][0] if _attr(node, "transA", 0) else ins[0][1]
        return prod(out) * k
    if op == "MatMul":
        return prod(out) * ins[0][-1]
    return _einsum_macs(_attr(node, "equation", b"").decode(), *ins) if len(node.input) == 2 else 0


def count_onnx_macs(path: str | os.PathLike, feeds: dict) -> dict[str, int]:
    """MACs per operator type of the graph at ``path`` run on ``feeds`` (input name -> array), plus ``total``."""
    import onnx

    model = onnx.load(str(path))
    shapes = _shapes(model, feeds)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        m = node_macs(node, shapes)
        if m:
            counts[node.op_type] = counts.get(node.op_type, 0) + m
    counts["total"] = sum(counts.values())
    return counts


def traced_step_macs(model, hw: tuple[int, int]) -> dict[str, dict[str, int]]:
    """MACs of one score evaluation for one clip, guided and unguided, counted on the ONNX graphs traced
    from the engine's score model; each export passes its parity check against eager PyTorch first, so the
    counted graph is the one that computes the score."""
    import tempfile

    from .graphs import SCORE_INPUTS, SCORE_OUTPUTS, score_inputs
    from .onnx_export import export_onnx

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, guided in (("guided", True), ("unguided", False)):
            names = SCORE_INPUTS[guided]
            example = score_inputs(model, 1, hw, guided)
            path = export_onnx(model, example, tmp, kind, names, SCORE_OUTPUTS,
                               lambda g=guided: score_inputs(model, 1, hw, g, seed=1), rtol=1e-3)
            out[kind] = count_onnx_macs(path, {n: t.numpy() for n, t in zip(names, example)})
    return out
