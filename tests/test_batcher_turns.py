"""The Batcher's turn-taking, on a stand-in engine whose batches run only when the test lets them: which clips
share a batch, who waits behind whom, cancelling and failing. No model, no clocks: each step is ordered by
events, so what is asserted does not depend on the machine's speed."""
from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest
import torch

from engine.api import Clip
from engine.batching import Batcher, BatcherClosed, RequestCancelled
from engine.diffusion.solvers import SamplerSpec

WAIT = 10  # seconds: only reached if the batcher hangs


class GatedEngine:
    """What a Batcher needs of an Engine. Each ``sample_clips`` call is recorded (the labels of its clips) and
    then blocks until ``release()``; a sample is its clip's label, so results show whose clips came back."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)
        self.fail_next = False

    def request_clips(self, labels, n, guidance, seed):
        labels = [labels] if isinstance(labels, int) else list(labels)
        if any(label < 0 for label in labels):
            raise ValueError(f"unknown digit {labels}")
        return [Clip(label, guidance, seed, i) for i, label in enumerate(x for x in labels for _ in range(n))]

    def sampler_spec(self, sampler=None, steps=None, nfe=None):
        return SamplerSpec(sampler or "euler_ancestral", nfe or 4)

    def check_spec(self, spec):
        return spec

    def sample_clips(self, clips, spec):
        self.batches.append([c.label for c in clips])
        self.started.release()
        assert self._gate.acquire(timeout=WAIT), "never released"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the batch failed")
        return torch.tensor([float(c.label) for c in clips])[:, None]

    def finish(self, labels, x):
        return [int(v) for v in x[:, 0]]

    def wait_started(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.started.acquire(timeout=WAIT), f"batches so far: {self.batches}"

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._gate.release()


@pytest.fixture
def engine():
    return GatedEngine()


def test_a_short_request_waits_at_most_one_batch_behind_a_long_one(engine):
    with Batcher(engine, max_batch=4, max_delay_ms=0) as batcher:
        long = batcher.submit(1, n=10)
        engine.wait_started()  # batch 0: the long request's first 4 clips
        short = batcher.submit(2, n=1)
        engine.release()
        engine.wait_started()
        engine.release()
        engine.wait_started()
        engine.release(2)
        assert long.result(WAIT) == [1] * 10 and short.result(WAIT) == [2]
    # batch 1 was the long request's turn (it had started); the short one's turn came next, filled by the long
    assert engine.batches == [[1, 1, 1, 1], [1, 1, 1, 1], [2, 1, 1]]


def test_a_batch_that_is_not_full_takes_in_requests_that_arrive_while_it_waits(engine):
    with Batcher(engine, max_batch=3, max_delay_ms=60_000) as batcher:  # full before the delay can matter
        futures = [batcher.submit(d, n=1) for d in (4, 5, 6)]
        engine.wait_started()
        engine.release()
        assert [f.result(WAIT) for f in futures] == [[4], [5], [6]]
    assert engine.batches == [[4, 5, 6]]


def test_requests_of_different_specs_never_share_a_batch(engine):
    with Batcher(engine, max_batch=8, max_delay_ms=0) as batcher:
        first = batcher.submit(1, n=1, nfe=4)
        engine.wait_started()
        a, b = batcher.submit(2, n=1, nfe=4), batcher.submit(3, n=1, nfe=8)
        engine.release(3)
        assert (first.result(WAIT), a.result(WAIT), b.result(WAIT)) == ([1], [2], [3])
    assert [1] in engine.batches and [3] in engine.batches and all(not {2, 3} <= set(b) for b in engine.batches)


def test_a_cancelled_request_runs_no_more_batches_and_the_others_go_on(engine):
    with Batcher(engine, max_batch=2, max_delay_ms=0) as batcher:
        running = batcher.submit(1, n=6)
        engine.wait_started()
        waiting = batcher.submit(2, n=2)
        assert batcher.cancel(waiting)  # not started yet: cancelled outright
        assert batcher.cancel(running)  # running: fails before its next batch; this one finishes
        engine.release()
        with pytest.raises(RequestCancelled):
            running.result(WAIT)
        with pytest.raises(CancelledError):
            waiting.result(WAIT)
        after = batcher.submit(3, n=1)
        engine.wait_started()
        engine.release()
        assert after.result(WAIT) == [3]
    assert engine.batches == [[1, 1], [3]]


def test_a_failed_batch_fails_its_requests_only_and_bad_input_fails_its_future(engine):
    with Batcher(engine, max_batch=2, max_delay_ms=0) as batcher:
        bad = batcher.submit(-1, n=1)
        with pytest.raises(ValueError, match="unknown digit"):
            bad.result(WAIT)
        engine.fail_next = True
        doomed = batcher.submit(1, n=1)
        engine.wait_started()
        engine.release()
        with pytest.raises(RuntimeError, match="the batch failed"):
            doomed.result(WAIT)
        fine = batcher.submit(2, n=1)
        engine.wait_started()
        engine.release()
        assert fine.result(WAIT) == [2]


def test_close_fails_what_has_not_started_and_refuses_new_requests(engine):
    batcher = Batcher(engine, max_batch=1, max_delay_ms=0)
    started = batcher.submit(1, n=1)
    engine.wait_started()
    pending = [batcher.submit(d, n=1) for d in (2, 3)]
    closer = threading.Thread(target=batcher.close, kwargs={"cancel_pending": True})
    closer.start()
    engine.release(3)
    closer.join(WAIT)
    assert not closer.is_alive() and started.result(WAIT) == [1]
    assert all(isinstance(f.exception(WAIT), BatcherClosed) for f in pending)
    with pytest.raises(BatcherClosed):
        batcher.submit(4, n=1).result(WAIT)
    assert engine.batches == [[1]]
