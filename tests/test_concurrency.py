"""Concurrent callers and request batching: every request gets what it gets alone (per-clip seeds), its own
errors, and no future is left hanging."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from engine.api import Engine
from engine.batching import Batcher, BatcherClosed

REQUESTS = [dict(labels=[1], n=2, guidance=3.0, seed=1), dict(labels=[7, 1], n=1, guidance=0.0, seed=2),
            dict(labels=7, n=3, guidance=1.5, seed=3), dict(labels=None, n=1, guidance=3.0, seed=4),
            dict(labels=[1, 7], n=2, guidance=3.0, seed=5), dict(labels=[7], n=1, guidance=3.0, seed=1),
            dict(labels=[1], n=1, guidance=2.0, seed=9), dict(labels=[7], n=2, guidance=0.5, seed=0)]
SPEC = dict(sampler="dpmpp_2m_sde", nfe=3)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine(tiny_checkpoint, batch_size=4)


@pytest.fixture(scope="module")
def alone(engine):
    return [engine.generate(**r, **SPEC) for r in REQUESTS]


def _same(a, b):
    assert a.labels == b.labels
    assert torch.allclose(a.mels, b.mels, rtol=1e-4, atol=1e-4)


def test_generate_from_eight_threads_returns_what_each_request_gets_alone(engine, alone):
    start = threading.Barrier(len(REQUESTS))

    def call(r):
        start.wait()
        return engine.generate(**r, **SPEC)

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        results = list(pool.map(call, REQUESTS))
    for got, want in zip(results, alone):
        _same(got, want)


def test_batched_requests_get_their_own_clips_and_share_batches(engine, alone, monkeypatch):
    calls = []
    real = engine.sample_clips
    monkeypatch.setattr(engine, "sample_clips", lambda clips, spec: calls.append(len(clips)) or real(clips, spec))
    with Batcher(engine, max_batch=8, max_delay_ms=200) as batcher:
        futures = [batcher.submit(**r, **SPEC) for r in REQUESTS]
        results = [f.result(timeout=120) for f in futures]
    for got, want in zip(results, alone):
        _same(got, want)
    assert sum(calls) == sum(len(r.labels) for r in alone) and len(calls) < len(REQUESTS)
    assert max(calls) <= 8


def test_each_request_gets_its_own_error(engine, alone):
    with Batcher(engine, max_delay_ms=100) as batcher:
        good = batcher.submit(**REQUESTS[0], **SPEC)
        bad_digit = batcher.submit(labels=[3], **SPEC)
        bad_nfe = batcher.submit(labels=[1], sampler="heun", nfe=0)
        other_spec = batcher.submit(labels=[1], n=1, seed=1, sampler="heun", nfe=3)  # batched apart: other solver
        with pytest.raises(ValueError, match="unknown digit 3"):
            bad_digit.result(timeout=60)
        with pytest.raises(ValueError, match="nfe must be"):
            bad_nfe.result(timeout=60)
        _same(good.result(timeout=60), alone[0])
        _same(other_spec.result(timeout=60), engine.generate(labels=[1], n=1, seed=1, sampler="heun", nfe=3))


def test_close_drains_or_fails_pending_requests_and_never_hangs(engine, monkeypatch):
    real = engine.sample_clips
    sampling, gate = threading.Event(), threading.Event()

    def gated(clips, spec):  # a batch starts, then waits for the test to let it run
        sampling.set()
        assert gate.wait(timeout=60), "the test never opened the gate"
        return real(clips, spec)

    monkeypatch.setattr(engine, "sample_clips", gated)
    batcher = Batcher(engine, max_batch=1, max_delay_ms=0)
    futures = [batcher.submit(labels=[1], seed=s, **SPEC) for s in range(4)]
    assert sampling.wait(timeout=60)  # the first request is in a batch; the other three wait behind it
    closing = threading.Thread(target=batcher.close, kwargs=dict(cancel_pending=True, timeout=60))
    closing.start()  # close() fails the waiting requests, then waits for the running batch
    for f in futures[1:]:
        assert isinstance(f.exception(timeout=60), BatcherClosed)  # failed, not dropped, while the batch still runs
    gate.set()
    closing.join(timeout=120)
    assert not closing.is_alive() and not batcher._worker.is_alive()
    assert futures[0].result(timeout=0).mels.shape == (1, 80, 72)  # the running request was finished
    with pytest.raises(BatcherClosed):
        batcher.submit(labels=[1], **SPEC).result(timeout=1)
    drained = Batcher(engine, max_batch=1, max_delay_ms=0)
    futures = [drained.submit(labels=[7], seed=s, **SPEC) for s in range(3)]
    drained.close(timeout=60)
    assert all(f.result(timeout=0).mels.shape == (1, 80, 72) for f in futures)  # close() finished them all


def test_generation_sharded_over_two_torchrun_processes_writes_the_single_process_files(tiny_checkpoint, tmp_path):
    """torchrun, two local processes (gloo): each writes the clips whose index is its rank modulo 2, named
    as in the whole request; together they are the single process's files."""
    import os
    import subprocess
    import sys

    from engine.audio.wav import read_wav

    args = ["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "1", "--digit", "7", "-n", "3", "--nfe", "3",
            "--sampler", "dpmpp_2m_sde", "--seed", "4", "--quiet", "--save-mels"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "engine.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    # --standalone: the rendezvous is a c10d store on localhost:0, a port the kernel picks as torchrun binds it, and
    # the workers' process group shares that store (no second port picked first and bound later, which another
    # process could take in between, as a fixed --master_port could already be taken)
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                          "--nproc_per_node", "2", "-m", "engine.cli", *args, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    import numpy as np

    names = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.wav")) == [f"{d}_{k}.wav" for d in (1, 7) for k in range(3)]
    mels = np.load(tmp_path / "one" / "mels.npy")  # clips 0..5 of the request; rank r holds clips r, r + 2, r + 4
    for rank in (0, 1):
        assert np.allclose(np.load(tmp_path / "two" / f"mels.rank{rank}.npy"), mels[rank::2], rtol=1e-4, atol=1e-4)
    for name in names:
        a, _ = read_wav(tmp_path / "one" / name)
        b, _ = read_wav(tmp_path / "two" / name)
        # Griffin-Lim's 64 momentum iterations amplify last-bit differences of the batched mels to a few
        # 16-bit steps (up to 10 seen): the waves agree to far beyond audibility, not bit for bit
        snr = 20 * np.log10(np.linalg.norm(a) / max(np.linalg.norm(a - b), 1e-12))
        assert snr > 40, (name, snr)
