import math

import torch

from engine.storage.config import SDEConfig
from engine.diffusion.sde import karras_schedule, perturb, precondition, sample_training_sigma

SDE = SDEConfig(sigma_min=0.005, sigma_max=152.0, sigma_data=1.0)


def test_ve_marginals_have_the_predicted_variance_and_mean():
    x0 = torch.randn(4000, 1, 4, 4) * SDE.sigma_data + 2.0
    for s in (0.1, 1.0, 10.0):
        sigma = torch.full((4000,), s)
        x_t = perturb(x0, sigma, torch.randn_like(x0))
        want = (SDE.sigma_data ** 2 + s ** 2) ** 0.5  # x_0 of std sigma_data plus independent noise of std sigma
        assert abs(float(x_t.std()) - want) / want < 0.03
        assert abs(float(x_t.mean()) - 2.0) < 0.05 * (1 + s)
        _, _, c_in, _ = precondition(sigma, SDE)
        assert abs(float((c_in * (x_t - 2.0)).std()) - 1.0) < 0.03


def test_preconditioning_limits():
    c_skip, c_out, c_in, c_noise = precondition(torch.tensor([1e-4, 1e4]), SDE)
    assert c_skip.flatten()[0] > 0.999 and c_skip.flatten()[1] < 1e-6
    assert c_out.flatten()[0] < 1e-3 and abs(float(c_out.flatten()[1]) - 1.0) < 1e-3
    assert torch.allclose(c_noise, torch.log(torch.tensor([1e-4, 1e4])) / 4)


def test_training_sigmas_are_mostly_mid_range():
    s = sample_training_sigma(20000, SDE, torch.Generator().manual_seed(0))
    assert abs(float(torch.log(s).median()) - SDE.p_mean) < 0.05
    assert float((s > 10).float().mean()) < 0.03
    assert float(s.min()) >= SDE.sigma_min * (1 - 1e-6) and float(s.max()) <= SDE.sigma_max * (1 + 1e-6)


def test_karras_schedule_runs_from_sigma_max_to_zero():
    s = karras_schedule(10, SDE)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(float(s[0]), 152.0, rel_tol=1e-5) and math.isclose(float(s[-2]), 0.005, rel_tol=1e-4)
    assert (s[1:] < s[:-1]).all()
