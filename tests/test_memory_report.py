"""Memory figures (engine.evaluation.memory): the liveness rule on hand-built graphs with answers worked out by
hand, the planned figure on the tiny bundle's real graph, a measured figure in a fresh process, the
comparison and the report."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper  # noqa: E402

from engine.evaluation.memory import MIB, graph_plan, live_tensors, process_probe, report  # noqa: E402

F = 4  # bytes per float32


def _model(nodes, inputs, outputs, initializers=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _x(n=1000):
    return helper.make_tensor_value_info("x", T.FLOAT, [1, n])


def _y(n):
    return helper.make_tensor_value_info("y", T.FLOAT, [1, n])


def test_chain_holds_a_nodes_input_and_output_together():
    """x -> a -> b -> y, 1000 floats each: node 1 holds a (its input) and b (its output), 8000 bytes; the
    graph input x is made before the evaluation and counted apart."""
    m = _model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
                helper.make_node("Relu", ["b"], ["y"])], [_x()], [_y(1000)])
    p = graph_plan.plan_graph(m)
    assert p.timeline == [1000 * F, 2000 * F, 2000 * F]
    assert (p.peak_bytes, p.peak_node, p.input_bytes, p.n_fallback) == (2000 * F, 1, 1000 * F, 0)


def test_diamond_keeps_the_long_branch_alive():
    """a = relu(x) [1000]; b = concat(a, a) [2000], read last by the final add; c = sigmoid(a) [1000];
    d = concat(c, c) [2000]; y = b + d [2000]. By hand, per node: a; a+b; a+b+c; b+c+d; b+d+y, in floats
    1000, 3000, 4000, 5000, 6000: the peak, 24000 bytes, is at the last node, with b, d and y alive."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Concat", ["a", "a"], ["b"], axis=1),
             helper.make_node("Sigmoid", ["a"], ["c"]), helper.make_node("Concat", ["c", "c"], ["d"], axis=1),
             helper.make_node("Add", ["b", "d"], ["y"])]
    p = graph_plan.plan_graph(_model(nodes, [_x()], [_y(2000)]))
    assert p.timeline == [f * F for f in (1000, 3000, 4000, 5000, 6000)]
    assert p.peak_bytes == 6000 * F and p.peak_node == 4 and p.peak_op == "Add"
    assert sorted(t["name"] for t in p.alive_at_peak) == ["b", "d", "y"]
    assert {t["name"]: t["op"] for t in p.alive_at_peak}["b"] == "Concat"


def test_unread_tensor_lives_at_its_producer_only_and_weights_are_apart():
    """A dead output counts at its producer's node only; initializers and Constant nodes are weights."""
    w = helper.make_tensor("w", T.FLOAT, [1, 1000], np.ones(1000, np.float32))
    nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", T.FLOAT, [1, 1000], [0.5] * 1000)),
             helper.make_node("Mul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["dead"]),
             helper.make_node("Add", ["a", "k"], ["y"])]
    p = graph_plan.plan_graph(_model(nodes, [_x()], [_y(1000)], [w]))
    assert p.timeline == [0, 1000 * F, 2000 * F, 2000 * F]  # Constant; a; a + dead; a + y
    assert (p.weights_bytes, p.constants_bytes) == (1000 * F, 1000 * F)


def test_views_share_their_input_buffer_with_alias():
    s1 = helper.make_tensor("s1", T.INT64, [2], [1000, 1])
    s2 = helper.make_tensor("s2", T.INT64, [2], [1, 1000])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["a", "s1"], ["b"]),
             helper.make_node("Reshape", ["b", "s2"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = _model(nodes, [_x()], [_y(1000)], [s1, s2])
    assert graph_plan.plan_graph(m).timeline == [f * F for f in (1000, 2000, 2000, 2000)]
    assert graph_plan.plan_graph(m, alias=True).timeline == [f * F for f in (1000, 1000, 1000, 2000)]


def test_a_shape_inference_cannot_give_comes_from_a_run_and_a_missing_one_is_an_error():
    """NonZero's output length depends on the data: 4 nonzeros of a 2x3 input give a 2x4 int64 tensor."""
    x = helper.make_tensor_value_info("x", T.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    m = _model([helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Cast", ["nz"], ["y"], to=T.FLOAT)], [x], [y])
    feeds = {"x": np.array([[1, 0, 2], [0, 3, 4]], np.float32)}
    p = graph_plan.plan_graph(m, feeds=feeds)
    assert p.n_fallback >= 1 and p.n_unresolved == 0
    assert p.timeline == [2 * 4 * 8, 2 * 4 * 8 + 2 * 4 * F]
    inferred, _ = graph_plan.resolve_shapes(m, fallback=False)
    with pytest.raises(ValueError, match="no resolved shape"):
        graph_plan.liveness(inferred, {})


def test_batch_is_fixed_on_inputs_and_outputs_only_where_it_is_the_batch():
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", T.FLOAT, ["batch", "out_dim"])
    m = graph_plan.fix_batch(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), 5)
    dims = lambda vi: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(m.graph.input[0]) == [5, 8] and dims(m.graph.output[0]) == [5, None]
    assert graph_plan.plan_graph(m).peak_bytes == 5 * 8 * F


def test_compare_gives_a_verdict_with_its_margin():
    lo, hi = report.MARGIN["low"], report.MARGIN["high"]
    assert report.compare(100.0, 100.0)["agree"] is True
    assert report.compare(100.0, hi * 100 + report.MARGIN["fixed_mib"] + 1)["agree"] is False
    assert report.compare(100.0, lo * 100 - 1)["agree"] is False
    assert report.compare(None, 5.0)["agree"] is None


# ------------------------------------------------------------------------------------------- the tiny bundle


@pytest.fixture(scope="module")
def tiny_tapdiff(tiny_checkpoint, tmp_path_factory):
    from engine.bundle import load_bundle
    from engine.diffusion.score_model import score_model

    bundle = load_bundle(tiny_checkpoint, model="tapdiff")
    return bundle, score_model(bundle).eval(), tmp_path_factory.mktemp("memory_artifacts")


def test_planned_figure_of_the_real_graph_resolves_every_shape_and_scales_with_batch(tiny_tapdiff):
    bundle, model, art = tiny_tapdiff
    plans = {b: graph_plan.planned_onnx(bundle, b, 3.0, art, model) for b in (1, 4, 8)}
    for p in plans.values():
        assert p.n_unresolved == 0 and p.n_tensors > 100 and p.peak_bytes > 0 and p.weights_bytes > 0
    assert plans[1].weights_bytes == plans[8].weights_bytes  # weights apart: they do not grow with the batch
    assert 6.0 <= plans[8].peak_bytes / plans[1].peak_bytes <= 8.5
    assert 3.0 <= plans[4].peak_bytes / plans[1].peak_bytes <= 4.25
    # shape inference's shapes are the runtime's: every inferred activation checked against a run
    import onnx as _onnx

    from engine.evaluation.memory.graph_plan import _activation_names, _score_feeds, fix_batch, resolve_shapes, run_shapes

    m = fix_batch(_onnx.load(str(graph_plan.score_graph(bundle, True, art, model))), 4)
    feeds = _score_feeds(bundle, model, 4, True)
    inferred, res = resolve_shapes(m, feeds)
    names = [n for n in _activation_names(inferred.graph) if n not in res.fallback]
    ran = run_shapes(inferred, names, feeds)
    assert names and all(ran[n] == (tuple(res.shapes[n][0]), res.shapes[n][1]) for n in names)


def test_planned_torch_counts_op_outputs_within_the_allocator_peak(tiny_tapdiff):
    bundle, model, _ = tiny_tapdiff
    p = live_tensors.planned_torch(bundle, 4, 3.0, model)
    assert 0 < p["tensors_peak_bytes"] <= p["peak_bytes"]
    assert p["tensors_alive_at_peak"] and p["tensors_peak_op"]


def test_measured_figure_in_a_fresh_process_and_its_verdict(tiny_checkpoint, tiny_tapdiff):
    bundle, model, art = tiny_tapdiff
    planned = live_tensors.planned_torch(bundle, 8, 3.0, model)["peak_mib"]
    m = process_probe.measured_memory(tiny_checkpoint, "tapdiff", process_probe.Runtime("torch"), 8, 3.0, artifacts=art)
    assert m["measured_bytes"] > 0 and m["pid"] > 0 and m["rss_before_kib"] > 0
    assert isinstance(report.compare(planned, m["measured_bytes"] / MIB)["agree"], bool)
    ort = process_probe.measured_memory(tiny_checkpoint, "tapdiff", process_probe.Runtime("onnxruntime", False, False), 8, 3.0,
                                 artifacts=art)
    assert ort["measured_bytes"] > 0


@pytest.mark.slow  # the quick tier (-m "not slow") leaves it out
def test_report_command_writes_markdown_and_json(tiny_with_baselines, tmp_path):
    out = tmp_path / "mem"
    assert report.main(["--checkpoint", str(tiny_with_baselines), "--models", "tapdiff,two-model", "--batch", "2",
                        "--processes", "1", "--runtimes", "torch,ort-off", "--artifacts", str(tmp_path / "art"),
                        "--out", str(out)]) == 0
    md = (out / "memory.md").read_text()
    assert md.startswith("Command: `python -m engine.evaluation.memory --checkpoint")
    assert "| system | backend | batch | planned MiB |" in md and "#### tapdiff / two-model, by each figure" in md
    assert "Where the peak sits" in md
    r = json.loads((out / "memory.json").read_text())
    assert {"command", "commit", "machine", "versions"} <= set(r)
    assert len(r["rows"]) == 4 and all(row["planned_mib"] > 0 and row["measured_mib"] > 0 for row in r["rows"])
    assert all(isinstance(row["agree"], bool) for row in r["rows"])
    assert {q["runtime"] for q in r["ratios"]} == {"torch", "onnxruntime, arena off, pattern off"}
