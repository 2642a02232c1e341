"""Exported graphs run in onnxruntime's CPU provider against eager PyTorch, are the engine's own modules
(the exported score equals the engine's score function, fade included), and use only operators that
TensorRT's ONNX parser supports (checked against its support matrix; TensorRT is not installable here)."""
import json

import pytest
import torch

from engine.diffusion.guidance import conditioned
from engine.diffusion.taps import TapExtractor, onehot
from engine.models.classifier import NoiseConditionedClassifier
from engine.storage.config import ClassifierConfig, SDEConfig
from export.graphs import SCORE_INPUTS, SCORE_OUTPUTS, score_inputs
from export.onnx_export import export_onnx, ort_session
from export.trt_ops import check_onnx_for_tensorrt, load_support_matrix

MATRIX = None  # the copy shipped in export/data (or TAPDIFF_TRT_OPERATORS): nothing outside the repository


class TapsGraph(torch.nn.Module):
    """The tap extractor alone as a graph (x_t, sigma[, onehot]) -> features, grads, input_grad[, class gradient],
    logits: exported here to check its taps and operators apart from the decoder."""

    def __init__(self, extractor: TapExtractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None):
        return self.extractor(x_t, sigma, onehot).flat()

    def output_names(self, guided: bool = True) -> list[str]:
        n = len(self.extractor.tap_channels)
        return ([f"feature_{d}" for d in range(n)] + [f"grad_{d}" for d in range(n)] + ["input_grad"]
                + (["guidance"] if guided else []) + ["logits"])


def taps_inputs(b):
    return torch.randn(b, 1, 80, 72) * 2, torch.rand(b) * 5 + 0.05, onehot(torch.arange(b) % 10, 10)


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
    ref = graph.extractor(x, s, oh).flat()
    for name, g, r in zip(graph.output_names(), got, ref):
        err = (torch.from_numpy(g) - r).abs().max()
        assert err <= 1e-4 * r.abs().max() + 1e-12, name


def test_exported_taps_graph_uses_only_tensorrt_supported_operators(taps_onnx):
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


@pytest.mark.parametrize("fade", [0.0, 1.0])
def test_exported_score_equals_the_engines_score_function(tmp_path, fade):
    """The shipped checkpoint's score model, exported as it is, against the function the engine's solvers
    call (``conditioned(engine.torch_denoiser, onehot, gamma)``), guided with a guidance fade and without, and
    unguided; in onnxruntime, on inputs the export never saw."""
    from engine.api import Engine

    engine = Engine()
    engine.torch_denoiser.fade_sigma = fade
    model, hw = engine.torch_denoiser, engine.bundle.input_hw
    for guided in (True, False):
        names = SCORE_INPUTS[guided]
        path = export_onnx(model, score_inputs(model, 2, hw, guided), tmp_path, f"score_{guided}", names, SCORE_OUTPUTS,
                           lambda g=guided: score_inputs(model, 2, hw, g, seed=1))
        x, sigma, *cond = score_inputs(model, 2, hw, guided, seed=2)
        got = ort_session(path).run(None, {n: t.numpy() for n, t in zip(names, (x, sigma, *cond))})[0]
        with torch.no_grad():
            ref = conditioned(engine.torch_denoiser, *(cond or (None, None)))(x, sigma)
        assert float((torch.from_numpy(got) - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
        if guided:  # the fade is in the graph: the same inputs without it give another output
            engine.torch_denoiser.fade_sigma = 1.0 - fade
            with torch.no_grad():
                other = conditioned(engine.torch_denoiser, *cond)(x, sigma)
            engine.torch_denoiser.fade_sigma = fade
            assert float((other - ref).abs().max()) > 1e-3
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


@pytest.mark.parametrize("model", ["tapdiff", "ablation", "two-model"])
def test_macs_counted_on_the_traced_graph_equal_the_eager_count(tiny_with_baselines, model):
    """Two independent MAC counts of one score evaluation agree exactly: torch's FlopCounterMode over the
    eager code (explicit adjoint included) and the operators of the exported ONNX graph, guided and not."""
    from engine.diffusion.score_model import score_model
    from engine.evaluation.cost import step_cost
    from engine.bundle import load_bundle
    from export.onnx_macs import traced_step_macs

    b = load_bundle(tiny_with_baselines, model=model)
    traced = traced_step_macs(score_model(b), b.input_hw)
    eager = step_cost(b)
    assert traced["guided"]["total"] == eager.guided_macs
    assert traced["unguided"]["total"] == eager.unguided_macs
    assert traced["guided"]["ConvTranspose"] > 0  # the classifier's adjoint is in the guided graph
    assert ("ConvTranspose" in traced["unguided"]) == b.score_net.uses_taps  # plug-ins skip the classifier


def test_two_model_score_exports_with_tensorrt_supported_operators(tiny_with_baselines, tmp_path):
    from engine.diffusion.score_model import score_model
    from engine.bundle import load_bundle

    b = load_bundle(tiny_with_baselines, model="two-model")
    with torch.no_grad():
        for p in b.score_net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers would make the parity check vacuous
    model = score_model(b)
    path = export_onnx(model, score_inputs(model, 2, b.input_hw, True), tmp_path, "two_model", SCORE_INPUTS[True],
                       SCORE_OUTPUTS, lambda: score_inputs(model, 2, b.input_hw, True, seed=1))
    assert json.loads(path.with_suffix(".json").read_text())["parity"]["errors"]["denoised"]["max_ref"] > 0.1
    report = check_onnx_for_tensorrt(path, load_support_matrix(MATRIX))
    assert report.ok, report.unsupported
