"""Exported graphs run in onnxruntime's CPU provider against eager PyTorch, and use only operators that
TensorRT's ONNX parser supports (checked against its support matrix; TensorRT itself is not installable here)."""
import json
from pathlib import Path

import pytest
import torch

from engine.classifier import NoiseConditionedClassifier
from engine.config import ClassifierConfig, SDEConfig
from engine.taps import TapExtractor

pytest.importorskip("onnxruntime")
from export.onnx_export import export_onnx, ort_session  # noqa: E402
from export.taps_graph import TapsGraph  # noqa: E402
from export.trt_ops import check_onnx_for_tensorrt, load_support_matrix  # noqa: E402

MATRIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tensorrt" / "onnx-operators-trt10.md"


def taps_inputs(b):
    return torch.randn(b, 1, 80, 72) * 2, torch.rand(b) * 5 + 0.05, torch.nn.functional.one_hot(torch.arange(b) % 10, 10).float()


@pytest.fixture(scope="module")
def taps_onnx(tmp_path_factory):
    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), emb_dim=16))
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    graph = TapsGraph(TapExtractor(clf.eval(), SDEConfig()))
    out = tmp_path_factory.mktemp("export")
    path = export_onnx(graph, taps_inputs(2), out, "taps", ["x_t", "sigma", "onehot"], graph.output_names(),
                       lambda: taps_inputs(3), dynamic_axes={n: {0: "batch"} for n in ("x_t", "sigma", "onehot")})
    return path, graph


def test_tap_extractor_with_explicit_adjoint_exports_and_matches_eager(taps_onnx):
    path, graph = taps_onnx
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["parity"]["provider"] == "CPUExecutionProvider"
    assert [o["name"] for o in manifest["outputs"]] == graph.output_names()
    sess = ort_session(path)
    x, s, oh = taps_inputs(5)  # a batch size the export never saw
    got = sess.run(None, {"x_t": x.numpy(), "sigma": s.numpy(), "onehot": oh.numpy()})
    taps = graph.extractor(x, s, oh.argmax(-1))
    ref = [*taps.features, *taps.grads, taps.input_grad, taps.guidance, taps.logits]
    for name, g, r in zip(graph.output_names(), got, ref):
        err = (torch.from_numpy(g) - r).abs().max()
        assert err <= 1e-4 * r.abs().max() + 1e-12, name


def test_exported_taps_graph_uses_only_tensorrt_supported_operators(taps_onnx):
    if not MATRIX.is_file():
        pytest.skip(f"TensorRT operator matrix not found at {MATRIX}")
    report = check_onnx_for_tensorrt(taps_onnx[0], load_support_matrix(MATRIX))
    assert report.ok, report.unsupported
    assert {"Conv", "ConvTranspose", "Sigmoid"} <= set(report.ops)
    assert report.dynamic_inputs == ["x_t", "sigma", "onehot"]  # a TensorRT build needs a profile for these


def test_failed_parity_check_leaves_nothing_behind(tmp_path):
    class BranchOnValue(torch.nn.Module):
        def forward(self, x):
            return x * 2 if bool(x.sum() > 0) else x * 3  # traced once: the other branch is lost

    with pytest.raises(AssertionError, match="parity failed"):
        export_onnx(BranchOnValue(), (torch.ones(3),), tmp_path, "bad", ["x"], ["y"], lambda: (-torch.ones(3),))
    assert list(tmp_path.iterdir()) == []


def test_missing_provider_is_reported(taps_onnx):
    with pytest.raises((RuntimeError, ValueError)):
        ort_session(taps_onnx[0], providers=("NoSuchExecutionProvider",))


def test_whole_guided_score_function_exports_and_uses_only_tensorrt_operators(tmp_path):
    from engine.config import SubnetConfig
    from engine.score_subnet import ScoreSubnet
    from export.taps_graph import ScoreGraph

    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), emb_dim=16))
    sub = ScoreSubnet(SubnetConfig(widths=(8, 16, 16, 24), emb_dim=16, heads=2), SDEConfig(), clf.tap_channels, (80, 72))
    with torch.no_grad():
        for p in [*clf.parameters(), *sub.parameters()]:
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers would make the check vacuous
    graph = ScoreGraph(TapExtractor(clf.eval(), SDEConfig()), sub.eval())

    def inputs():
        x, s, oh = taps_inputs(2)
        return x, s, oh, torch.tensor([3.0, 0.0])

    path = export_onnx(graph, inputs(), tmp_path, "score", ["x_t", "sigma", "onehot", "gamma"], ["score"], inputs)
    parity = json.loads(path.with_suffix(".json").read_text())["parity"]["errors"]["score"]
    assert parity["max_ref"] > 0.1 and parity["max_abs"] <= 1e-4 * parity["max_ref"]
    if MATRIX.is_file():
        report = check_onnx_for_tensorrt(path, load_support_matrix(MATRIX))
        assert report.ok and report.dynamic_inputs == [], report.unsupported  # static shapes: a fixed profile


def test_tensorrt_profiles_and_cache_key_without_tensorrt(taps_onnx, tmp_path):
    from export.tensorrt_build import build_engine, engine_cache_key, optimization_profile

    path, _ = taps_onnx
    manifest = json.loads(path.with_suffix(".json").read_text())
    prof = optimization_profile(manifest, batch=(1, 8, 16))
    assert prof["x_t"] == ((1, 1, 80, 72), (8, 1, 80, 72), (16, 1, 80, 72)) and prof["onehot"][2] == (16, 10)
    with pytest.raises(ValueError, match="dynamic batch"):
        optimization_profile(manifest)
    k = engine_cache_key(path, prof, False, "10.0", "H100")
    assert k != engine_cache_key(path, prof, True, "10.0", "H100") != engine_cache_key(path, prof, False, "10.1", "H100")
    assert k == engine_cache_key(path, prof, False, "10.0", "H100")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="TensorRT is not installed"):
            build_engine(path, tmp_path / "x.plan", prof)
        assert not (tmp_path / "x.plan").exists()


@pytest.mark.parametrize("name", ["score_subnet", "score_ablation", "unet"])
def test_macs_counted_on_the_traced_graph_equal_the_eager_count(tiny_with_baselines, name):
    """Two independent MAC counts of one score evaluation agree exactly: torch's FlopCounterMode over the
    eager code (explicit adjoint included) and the operators of the exported ONNX graph, guided and not."""
    from engine.bundle import load_bundle
    from engine.cost import step_cost
    from export.onnx_macs import traced_step_macs

    b = load_bundle(tiny_with_baselines, subnet_name=name)
    traced = traced_step_macs(b.extractor, b.subnet, b.features.n_mels, b.features.frames, label=b.labels[0])
    eager = step_cost(b)
    assert traced["guided"]["total"] == eager.guided_macs
    assert traced["unguided"]["total"] == eager.unguided_macs
    assert traced["guided"]["ConvTranspose"] > 0  # the classifier's adjoint is in the guided graph
    assert ("ConvTranspose" in traced["unguided"]) == b.subnet.uses_taps  # plug-ins skip the classifier


def test_two_model_score_exports_with_tensorrt_supported_operators(tiny_with_baselines, tmp_path):
    from engine.bundle import load_bundle
    from export.taps_graph import score_graph

    b = load_bundle(tiny_with_baselines, subnet_name="unet")
    with torch.no_grad():
        for p in b.subnet.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers would make the parity check vacuous

    def inputs():
        x, s, oh = taps_inputs(2)
        return x, s, oh, torch.tensor([3.0, 1.0])

    path = export_onnx(score_graph(b.extractor, b.subnet), inputs(), tmp_path, "two_model",
                       ["x_t", "sigma", "onehot", "gamma"], ["score"], inputs)
    assert json.loads(path.with_suffix(".json").read_text())["parity"]["errors"]["score"]["max_ref"] > 0.1
    if MATRIX.is_file():
        report = check_onnx_for_tensorrt(path, load_support_matrix(MATRIX))
        assert report.ok, report.unsupported
