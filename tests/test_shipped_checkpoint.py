"""The checkpoint that ships with the package: it loads, and guidance makes the requested digit more
recognisable to the independent evaluation classifier (judged on re-analysed audio)."""
import pytest

from engine.api import Engine
from engine.evaluation.quality import QualityJudge, evaluate_quality
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


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
    sub = sum(p.numel() for p in b.score_net.parameters())
    assert sub < clf  # the adapter stays smaller than its backbone


@pytest.mark.slow  # the quick tier (-m "not slow") leaves it out
def test_guided_samples_are_recognised_more_often_than_unguided(engine, fsdd_root):
    judge = QualityJudge(load_bundle(DEFAULT_CHECKPOINT, model=None, need_evaluator=True), fsdd_root, range(10))
    rates = {}
    for gamma in (0.0, 3.0):
        r = evaluate_quality(engine, judge, 2, gamma, seed=0, spec=engine.sampler_spec("dpmpp_2m_sde", nfe=20))
        assert r.nfe == 20 and r.fd > judge.floor
        rates[gamma] = r.recognised
    assert rates[3.0] > rates[0.0] + 0.2, rates
