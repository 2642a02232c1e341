"""pytest-benchmark: one score evaluation (the sampler's unit of work) and vocoding one second.

    python -m pytest benchmarks/ --benchmark-only
"""
import pytest
import torch

from engine.bundle import load_bundle
from engine.checkpoint import DEFAULT_CHECKPOINT
from engine.config import FeatureConfig
from engine.guidance import TapdiffScore, guided
from engine.vocoder import GriffinLim


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_CHECKPOINT)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("gamma", [0.0, 3.0])
def test_score_evaluation(benchmark, bundle, batch, gamma):
    f = bundle.features
    fn = guided(TapdiffScore(bundle.extractor, bundle.subnet), torch.arange(batch) % 10, gamma)
    x, s = torch.randn(batch, 1, f.n_mels, f.frames), torch.ones(batch)
    benchmark.extra_info.update(batch=batch, guidance=gamma)
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
