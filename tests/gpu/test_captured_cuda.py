"""The static-buffer runner on a real GPU: every solver captured in CUDA graphs with the shipped score model, one
runner run twice with new noise and new conditioning (refilled static buffers), each run matching the eager loop,
so a replay that kept the first run's inputs fails. Collected only where CUDA is available (tests/conftest.py)."""
import pytest
import torch

from engine.diffusion.captured import CapturedSampler
from engine.diffusion.guidance import conditioned
from engine.diffusion.noise import clip_seed, draw_noise
from engine.diffusion.score_model import score_model
from engine.diffusion.solvers import SOLVERS, SamplerSpec, get_solver, sample
from engine.diffusion.taps import onehot
from engine.bundle import load_bundle
from engine.storage.checkpoint import DEFAULT_CHECKPOINT

# Same device, same kernels: at most an algorithm choice differs under capture (<= 1e-5 relative per evaluation,
# amplified 7-40x over the run), in normalised units relative to max(1, max |eager|).
TOL = 2e-4


@pytest.fixture(scope="module")
def bundle_and_model():
    bundle = load_bundle(DEFAULT_CHECKPOINT)
    return bundle, score_model(bundle).cuda()


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_one_captured_runner_matches_eager_on_new_noise_and_conditioning(bundle_and_model, name, no_tf32):
    bundle, model = bundle_and_model
    spec, solver = SamplerSpec(name, 6), get_solver(name)
    sigmas, shape, n = spec.schedule(bundle.sde), (1, bundle.features.n_mels, bundle.features.frames), model.n_classes
    onehot_buf, gamma_buf = torch.zeros(2, n, device="cuda"), torch.zeros(2, device="cuda")
    runner = CapturedSampler(conditioned(model, onehot_buf, gamma_buf), solver, (2, *shape), "cuda")
    refs = []
    for seed, labels, gammas in ((0, [3, 7], [3.0, 1.5]), (1, [5, 1], [2.0, 4.0])):
        noise = draw_noise([clip_seed(seed, k) for k in range(2)], shape, 6, solver.noise_per_step, "cuda")
        oh, g = onehot(torch.tensor(labels, device="cuda"), n), torch.tensor(gammas, device="cuda")
        onehot_buf.copy_(oh)
        gamma_buf.copy_(g)
        got = runner.run(sigmas, noise)
        with torch.no_grad():
            ref = sample(conditioned(model, oh, g), sigmas, noise, solver)
        assert float((got - ref).abs().max()) <= TOL * max(1.0, float(ref.abs().max())), (name, seed)
        refs.append(ref)
    assert runner.capture and runner.graphs  # it really replayed CUDA graphs
    assert float((refs[0] - refs[1]).abs().max()) > 100 * TOL * max(1.0, float(refs[0].abs().max()))
