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
