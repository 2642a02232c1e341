"""The checkpoint that ships with the package: it loads, and guidance makes the requested digit more
recognisable to the independent evaluation classifier (judged on re-analysed audio)."""
import pytest
import torch

from engine.api import Engine
from engine.bundle import load_bundle
from engine.checkpoint import DEFAULT_CHECKPOINT
from engine.evaluation import recognition


@pytest.fixture(scope="module")
def engine():
    return Engine(batch_size=20)


def test_shipped_checkpoint_is_complete_and_records_its_provenance():
    b = load_bundle(DEFAULT_CHECKPOINT, need_evaluator=True)
    cfg = b.config
    assert b.labels == tuple(range(10))
    for part in ("classifier", "score_subnet"):
        assert cfg["training"][part]["command"].startswith("tapdiff train-")
    assert len(cfg["data"]["hash"]) == 64
    clf = sum(p.numel() for p in b.classifier.parameters())
    sub = sum(p.numel() for p in b.subnet.parameters())
    assert sub < clf  # the adapter stays smaller than its backbone


def test_guided_samples_are_recognised_more_often_than_unguided(engine):
    ev = load_bundle(DEFAULT_CHECKPOINT, need_subnet=False, need_evaluator=True)
    digits = list(range(10))
    rates = {}
    for gamma in (0.0, 3.0):
        out = engine.generate(digits, n=2, steps=25, guidance=gamma, seed=0)
        assert torch.isfinite(out.waves).all()
        rates[gamma], _, _ = recognition(ev.evaluator, out.waves, out.labels, out.sample_rate, ev.features, ev.normaliser)
    assert rates[3.0] > rates[0.0] + 0.2, rates
