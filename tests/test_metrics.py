"""The Frechet distance, the headline quality metric, against scipy's matrix square root."""
import numpy as np
import pytest
from scipy import linalg

from engine.evaluation.metrics import frechet_distance


def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), with scipy's sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fd_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    l1, l2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    a = rng.normal(size=(4000, d)) @ l1 + 1.0
    b = rng.normal(size=(4000, d)) @ l2 - 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-6)
    # and the population value it estimates: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)
    s1, s2 = l1.T @ l1, l2.T @ l2
    r1 = linalg.sqrtm(s1).real
    population = d * 1.5 ** 2 + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(a, b) == pytest.approx(population, rel=0.05)


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 8))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)


def test_fd_stays_real_and_finite_when_covariances_are_rank_deficient():
    """Fewer samples than dimensions (as with 100 clips and 256-dim embeddings): scipy's sqrtm of the
    non-symmetric product can turn complex; the symmetric form stays real."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(30, 64)) + 0.1
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert fd == pytest.approx(scipy_fd(a, b), rel=1e-3)
