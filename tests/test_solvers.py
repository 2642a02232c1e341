"""The solvers: each recovers a Gaussian with its exact denoiser, the 2nd-order ones converge at order 2,
the static-buffer runner runs the same steps, no step reads the device on the host, and noise is per clip."""
import math

import numpy as np
import pytest
import torch
from host_sync import NoHostSync

from engine.diffusion.captured import CapturedSampler
from engine.diffusion.guidance import apply_guidance, conditioned, guidance_weight
from engine.diffusion.noise import clip_seed, draw_noise
from engine.diffusion.solvers import SOLVERS, SamplerSpec, get_solver, run_steps, sample
from engine.diffusion.sde import karras_schedule
from engine.storage.config import SDEConfig

SDE = SDEConfig(sigma_min=0.005, sigma_max=40.0)
S0 = 0.7  # data N(0, S0^2): the exact denoiser of x_t is x * S0^2 / (S0^2 + sigma^2)


def exact_denoiser(x, sigma):
    return x * (S0 ** 2 / (S0 ** 2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2))


def noise_for(solver, steps, batch=4, shape=(1, 8, 8), seed=0):
    return draw_noise([clip_seed(seed, k) for k in range(batch)], shape, steps, get_solver(solver).noise_per_step)


def exact_endpoint(x, sigma):
    """The probability-flow ODE's endpoint from (x, sigma) for N(0, S0^2) data: what a distilled student
    learns, and what ``multistep`` expects of its model."""
    return x * (S0 / torch.sqrt(S0 ** 2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2))


# Steps per solver for a 5% std check: the stochastic first-order ones need many, the 2nd-order ones few; the
# multistep sampler of distilled students, given the exact endpoint map, is exact at any number of steps.
BUDGET = {"euler_maruyama": 200, "euler_ancestral": 100, "pc": 100, "heun": 40, "heun_churn": 40, "dpmpp_2m": 30,
          "dpmpp_2m_sde": 60, "multistep": 4}


def test_every_registered_solver_has_a_recovery_budget():
    assert set(BUDGET) == set(SOLVERS)


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_solver_recovers_a_gaussian_with_the_exact_denoiser(name):
    steps = BUDGET[name]
    # 64 elements per sample: the corrector step size uses per-sample norms, meaningless in 2-4 dims
    model = exact_endpoint if name == "multistep" else exact_denoiser
    x = sample(model, SamplerSpec(name, steps).schedule(SDE), noise_for(name, steps, batch=500), name,
               {"snr": 0.1} if name == "pc" else None)
    assert abs(float(x.std()) - S0) < 0.05 * S0
    assert abs(float(x.mean())) < 0.05


def _ode_error(name: str, steps: int, options=None) -> float:
    """Max error of the probability-flow ODE solution from sigma 10 to 0.5 on a geometric schedule; for
    Gaussian data it is linear with x(sigma) = x(10) sqrt((S0^2 + sigma^2) / (S0^2 + 100))."""
    sigmas = torch.from_numpy(np.geomspace(10.0, 0.5, steps + 1))
    noise = noise_for(name, steps, batch=8)
    x = sample(exact_denoiser, sigmas, noise, name, options)
    exact = noise.prior * 10.0 * math.sqrt((S0 ** 2 + 0.25) / (S0 ** 2 + 100.0))
    return float((x.double() - exact.double()).abs().max())


def test_multistep_needs_the_endpoint_map_and_stops_above_sigma_min():
    spec = SamplerSpec("multistep", 4)
    sig = spec.schedule(SDE)
    assert len(sig) == 5 and sig[-1] == 0 and float(sig[-2]) > SDE.sigma_min * 10
    assert torch.allclose(sig[:4], karras_schedule(5, SDE)[:4])
    # with the posterior mean (a plain denoiser) instead of the endpoint map it returns a too-narrow sample
    x = sample(exact_denoiser, sig, noise_for("multistep", 4, batch=500), "multistep")
    assert float(x.std()) < 0.9 * S0


@pytest.mark.parametrize("name,options,order", [("heun", None, 2), ("dpmpp_2m", None, 2),
                                                ("euler_ancestral", {"eta": 0.0}, 1)],  # eta 0: DDIM, 1st order
                         ids=["heun", "dpmpp_2m", "ddim"])
def test_deterministic_solvers_converge_at_their_order(name, options, order):
    e1, e2, e3 = (_ode_error(name, n, options) for n in (8, 16, 32))
    rates = math.log2(e1 / e2), math.log2(e2 / e3)
    assert all(order - 0.35 < r < order + 0.6 for r in rates), (name, e1, e2, e3, rates)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_same_noise_same_output_and_other_noise_differs(name):
    sig = karras_schedule(6, SDE)
    a = sample(exact_denoiser, sig, noise_for(name, 6, seed=1), name)
    b = sample(exact_denoiser, sig, noise_for(name, 6, seed=1), name)
    c = sample(exact_denoiser, sig, noise_for(name, 6, seed=2), name)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_static_buffer_runner_runs_the_same_steps_with_fixed_buffers(name):
    sig = karras_schedule(6, SDE)
    noise = noise_for(name, 6)
    ref = sample(exact_denoiser, sig, noise, name)
    runner = CapturedSampler(exact_denoiser, name, noise.prior.shape)
    assert runner.capture is False  # CPU: the same step runs eagerly over the same buffers
    ptrs = [b.data_ptr() for b in runner.buffers()]
    seen = []
    out = runner.run(sig, noise, callback=lambda i, s, d: seen.append((i, s, d.data_ptr())))
    assert torch.equal(out, ref)
    assert ptrs == [b.data_ptr() for b in runner.buffers()]
    assert [(i, s) for i, s, _ in seen] == list(zip(range(6), sig[:-1].tolist()))
    assert {p for *_, p in seen} == {runner.denoised.data_ptr()}
    assert torch.equal(runner.run(sig, noise), out)  # a second run over the same buffers: history was reset


def test_static_runner_refuses_capture_without_cuda_and_wrong_noise():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            CapturedSampler(exact_denoiser, "heun", (1, 1, 2, 2), capture=True)
    runner = CapturedSampler(exact_denoiser, "euler_maruyama", (4, 1, 8, 8))
    with pytest.raises(ValueError, match="steps, draws per step"):
        runner.run(karras_schedule(5, SDE), noise_for("euler_maruyama", 6))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_no_host_synchronisation_or_host_data_inside_the_loop(name, tiny_score_model):
    """The real tapdiff score model, guided, under a dispatch mode that fails on host reads and host data:
    what CUDA-graph capture needs from every step."""
    model, oh, gamma = tiny_score_model
    solver, sig = get_solver(name), karras_schedule(3, SDE)
    noise = draw_noise([0, 1], (1, 80, 72), 3, solver.noise_per_step)
    table = solver.table(sig)  # built on the host before the loop, copied to the device once
    with torch.no_grad(), NoHostSync():
        x = run_steps(conditioned(model, oh, gamma), solver, table, sig.tolist(), noise)
    assert torch.isfinite(x).all() and torch.equal(x, sample(conditioned(model, oh, gamma), sig, noise, name))
    with pytest.raises(AssertionError, match="host"), NoHostSync():  # a host read is caught
        run_steps(lambda x, s: exact_denoiser(x, s) * float(s[0]), solver, table, sig.tolist(), noise)


@pytest.fixture(scope="module")
def tiny_score_model():
    from engine.diffusion.score_model import build_score_model
    from engine.diffusion.taps import TapExtractor, onehot
    from engine.models.classifier import NoiseConditionedClassifier
    from engine.models.registry import SCORE_NETWORKS
    from engine.storage.config import ClassifierConfig, SubnetConfig

    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 8, 16, 16), emb_dim=16)).eval()
    net = SCORE_NETWORKS["tapdiff"].build(SubnetConfig(widths=(8, 8, 16, 16), emb_dim=16, heads=2), clf.tap_channels,
                                          (80, 72))
    model = build_score_model(TapExtractor(clf, SDE), net, fade_sigma=0.5).eval()
    return model, onehot(torch.tensor([1, 7]), 10), torch.tensor([3.0, 1.0])


def test_nfe_is_the_budget_for_one_and_two_evaluation_solvers():
    assert get_solver("heun").nfe(10) == 19 and get_solver("heun").steps_for_nfe(20) == 10
    assert get_solver("dpmpp_2m").nfe(20) == 20 and get_solver("pc").nfe(10) == 20
    assert SamplerSpec.from_nfe("heun", 20).nfe == 19 and SamplerSpec.from_nfe("dpmpp_2m_sde", 15).steps == 15
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return exact_denoiser(x, sigma)

    for name in SOLVERS:
        spec = SamplerSpec.from_nfe(name, 10)
        calls.clear()
        sample(counting, spec.schedule(SDE), noise_for(name, spec.steps), name)
        assert len(calls) == spec.nfe <= 10, name


@pytest.mark.parametrize("kwargs,match", [({"solver": "ddim", "steps": 3}, "unknown sampler"),
                                          ({"solver": "heun", "steps": 0}, "steps must be"),
                                          ({"solver": "heun", "steps": 3, "rho": -1.0}, "rho must be"),
                                          ({"solver": "heun", "steps": 3, "options": (("snr", 1.0),)}, "no option")])
def test_sampler_spec_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerSpec(**kwargs)
    with pytest.raises(ValueError, match="nfe must be"):
        SamplerSpec.from_nfe("heun", 0)


def test_guidance_is_gamma_times_weight_times_sigma_squared_in_denoiser_form():
    d, g = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    sigma, gamma = torch.tensor([2.0, 0.1]), torch.tensor([3.0, 0.0])
    out = apply_guidance(d, g, sigma, gamma, fade_sigma=0.0)
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([12.0, 0.0]))  # 3 * 1 * 2^2, and gamma 0 leaves D
    faded = apply_guidance(d, g, sigma, torch.tensor([3.0, 3.0]), fade_sigma=1.0)
    assert torch.allclose(faded[:, 0, 0, 0], 3.0 * sigma ** 2 * guidance_weight(sigma, 1.0))
    assert torch.allclose(guidance_weight(sigma, 1.0), torch.tensor([0.8, 0.01 / 1.01]))


def test_conditioning_never_asks_for_guidance_when_unguided():
    seen = []

    def model(x, sigma, onehot=None, gamma=None):
        seen.append(onehot is None)
        return x

    x, s = torch.zeros(2, 1, 2, 2), torch.ones(2)
    conditioned(model, None, None)(x, s)
    conditioned(model, torch.eye(10)[:2], torch.ones(2))(x, s)
    assert seen == [True, False]
    with pytest.raises(ValueError, match="one gamma per clip"):
        conditioned(model, torch.eye(10)[:2], torch.ones(3))


def test_clip_noise_does_not_depend_on_its_batch():
    one = draw_noise([clip_seed(5, 2)], (1, 4, 4), 3, 2)
    many = draw_noise([clip_seed(5, k) for k in range(4)], (1, 4, 4), 3, 2)
    assert torch.equal(one.prior[0], many.prior[2]) and torch.equal(one.steps[:, :, 0], many.steps[:, :, 2])
    assert clip_seed(5, 2) != clip_seed(2, 5) and clip_seed(0, 1) != clip_seed(1, 0)
    with pytest.raises(ValueError, match=">= 0"):
        clip_seed(-1, 0)
