"""The static-buffer runner on a real GPU: every solver captured in CUDA graphs with the shipped score model, one
runner run twice with new noise and new conditioning (refilled static buffers), each run matching the eager loop,
so a replay that kept the first run's inputs fails; and the Engine's kept runners (captured) against its eager
loop (``Engine(capture=False)``) over two requests. The same check runs on CPU, where the runner steps eagerly
over its static buffers (tests/test_gpu_kit.py). Tolerance: tests/tolerances.py (CAPTURED_TOL)."""
import pytest
import torch

from engine.diffusion.solvers import SOLVERS, SamplerSpec
from gpu_checks import CAPTURED_RUNS, captured_vs_eager, compare, fmt, timeout_marks
from tolerances import APART_FACTOR, CAPTURED_TOL, CAPTURED_WHY, captured_scale

pytestmark = [pytest.mark.gpu, *timeout_marks(120)]


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_one_captured_runner_matches_eager_on_new_noise_and_conditioning(engines, solver, no_tf32,
                                                                         record_property):
    eng = engines("cuda")
    spec, feats = SamplerSpec(solver, 8), eng.bundle.features
    check = captured_vs_eager(eng.torch_denoiser, eng.torch_denoiser.n_classes, solver, spec.schedule(eng.bundle.sde),
                              CAPTURED_RUNS, "cuda", shape=(1, feats.n_mels, feats.frames),
                              options=dict(spec.options), require_capture=True)
    record_property("detail", check.detail)
    assert check.ok, check.detail


@pytest.mark.parametrize("model", ["tapdiff", "two-model"])
def test_the_engines_kept_runner_matches_its_eager_loop_over_two_requests(engines, model, no_tf32, record_property):
    """Two requests (other digits, guidance and seed) through one captured Engine, whose second request replays the
    runner the first one captured, each against ``Engine(capture=False)`` in normalised units."""
    captured, eager = engines("cuda", model=model), engines("cuda", model=model, capture=False)
    assert captured.static_runners and not eager.static_runners
    spec = captured.sampler_spec()
    parts, refs = [], []
    for digits, guidance, seed in (([3, 7, 5, 1], 3.0, 0), ([5, 1, 8, 0], 1.5, 1)):
        got = captured.sample_clips(captured.request_clips(digits, 1, guidance, seed), spec)
        ref = eager.sample_clips(eager.request_clips(digits, 1, guidance, seed), spec)
        c = compare(got, ref, CAPTURED_TOL, captured_scale(ref))
        parts.append(c)
        refs.append(ref)
    runners = [entry[0] for entry in captured._runners.values()]  # (runner, onehot, gamma, lock) per spec and batch
    apart = compare(refs[1], refs[0], float("inf"), captured_scale(refs[0]))["rel"]
    detail = (f"{model}, {spec.label()}, batch 4, {len(runners)} runner(s) kept: "
              + "; ".join(f"request {i + 1} {fmt(c)}" for i, c in enumerate(parts))
              + f"; requests differ by {apart:.3g} [{CAPTURED_WHY}]")
    record_property("detail", detail)
    assert len(runners) == 1 and runners[0].capture and runners[0].graphs, detail
    assert all(c["ok"] for c in parts), detail
    assert apart > APART_FACTOR * CAPTURED_TOL, detail  # else a stale replay would pass
    assert torch.isfinite(refs[0]).all()
