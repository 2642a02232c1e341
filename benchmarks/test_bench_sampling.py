"""pytest-benchmark: one score evaluation (the sampler's unit of work) and vocoding one second.

    python -m pytest benchmarks/ --benchmark-only
"""
import pytest
import torch

from engine.audio.vocoders import GriffinLim
from engine.evaluation.cost import score_eval
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
from engine.storage.config import FeatureConfig


@pytest.fixture(scope="module", params=["tapdiff", "two-model"])
def bundle(request):
    return load_bundle(DEFAULT_CHECKPOINT, model=request.param)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("gamma", [0.0, 3.0])
def test_score_evaluation(benchmark, bundle, batch, gamma):
    fn, x, s = score_eval(bundle, batch, gamma)
    benchmark.extra_info.update(model=bundle.model, batch=batch, guidance=gamma)
    with torch.no_grad():
        out = benchmark(fn, x, s)
    assert torch.isfinite(out).all()


def test_griffin_lim_one_second(benchmark):
    cfg = FeatureConfig()
    mel = torch.randn(1, cfg.n_mels, 100) - 5
    out = benchmark(GriffinLim(cfg), mel)
    assert out.shape == (1, 16000)


@pytest.fixture(scope="module")
def hifigan():
    pytest.importorskip("onnxruntime")
    from vocoder_rtf import hifigan_model

    try:
        return hifigan_model(None)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(f"HiFi-GAN not available: {e}")


def test_hifigan_one_second_eager(benchmark, hifigan):
    mel = torch.randn(1, 80, 100) - 5
    with torch.no_grad():
        assert benchmark(hifigan, mel).shape == (1, 16000)


def test_hifigan_one_second_onnxruntime(benchmark, hifigan, tmp_path):
    from export.onnx_export import export_onnx, ort_session

    mel = torch.randn(1, 80, 100) - 5
    sess = ort_session(export_onnx(hifigan, (mel,), tmp_path, "hifigan", ["log_mel"], ["wave"], lambda: (mel + 0.1,)))
    out = benchmark(sess.run, None, {"log_mel": mel.numpy()})
    assert out[0].shape == (1, 16000)
