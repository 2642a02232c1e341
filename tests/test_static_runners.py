"""The Engine's static-buffer runners (what it captures in CUDA graphs on a GPU), exercised on CPU where they
step eagerly over the same buffers: kept per (spec, batch, guided), conditioning refilled per chunk, so a
reused runner gives every request exactly what the eager loop gives it."""
import torch

from engine.api import MAX_RUNNERS, Engine

REQUESTS = [dict(digit=[1, 7], n=1, guidance=3.0, seed=1), dict(digit=[7, 7], n=1, guidance=0.5, seed=2),
            dict(digit=[7, 1], n=1, guidance=0.0, seed=3), dict(digit=[1, 1], n=1, guidance=5.0, seed=4)]


def test_a_kept_runner_sees_each_requests_noise_and_conditioning(tiny_checkpoint):
    eager = Engine(tiny_checkpoint, backend="torch")
    static = Engine(tiny_checkpoint, backend="torch")
    static.static_runners = True
    for r in REQUESTS:
        want = eager.generate(**r, sampler="dpmpp_2m_sde", nfe=4).mels
        got = static.generate(**r, sampler="dpmpp_2m_sde", nfe=4).mels
        assert torch.equal(got, want), r
    # one runner per (spec, batch, guided): the three guided requests shared one, the unguided one has its own
    assert sorted(guided for (_, _, guided) in static._runners) == [False, True]


def test_runners_are_kept_per_spec_and_batch_and_bounded(tiny_checkpoint):
    engine = Engine(tiny_checkpoint, backend="torch", batch_size=2)
    engine.static_runners = True
    for nfe in range(1, MAX_RUNNERS + 3):
        engine.generate([1, 7, 1], n=1, nfe=nfe, sampler="euler_maruyama")  # chunks of 2 and 1
    assert len(engine._runners) == MAX_RUNNERS
    assert {batch for (_, batch, _) in engine._runners} == {1, 2}
