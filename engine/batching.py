"""Request batching in process: ``Batcher(engine).submit(...) -> Future[Generation]``.

A worker thread takes the requests that arrive within ``max_delay_ms`` of the first waiting one (up to
``max_batch`` clips, same solver and steps), samples their clips as one batch, and hands each request its
own clips back, vocoded. Per-clip seeds make a request's result the one it would get alone, whatever it was
batched with (up to the last bits of batched sums). Each request's error (bad input, a failed batch) goes
to its own future; ``close()`` finishes what was accepted (or fails it with ``cancel_pending=True``) and
never leaves a future unresolved.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from .api import Clip, Engine, Generation
from .diffusion.solvers import SamplerSpec


class BatcherClosed(RuntimeError):
    """A request submitted to, or still waiting in, a closed batcher."""


@dataclass
class _Request:
    clips: list[Clip]
    spec: SamplerSpec
    future: Future


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, max_delay_ms: float = 10.0):
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay_ms / 1000
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="tapdiff-batcher", daemon=True)
        self._worker.start()

    def submit(self, labels=None, n: int = 1, guidance: float = 3.0, seed: int = 0, sampler: str | None = None,
               steps: int | None = None, nfe: int | None = None) -> Future:
        """Like ``Engine.generate``, asynchronously. Bad input fails the returned future, not the caller."""
        future: Future = Future()
        try:
            clips = self.engine.request_clips(labels, n, guidance, seed)
            spec = self.engine.sampler_spec(sampler, steps, nfe)
        except ValueError as e:
            future.set_exception(e)
            return future
        with self._lock:  # no request slips in after close() has drained the queue
            if self._closed.is_set():
                future.set_exception(BatcherClosed("the batcher is closed"))
                return future
            self._queue.put(_Request(clips, spec, future))
        return future

    def _gather(self, first: _Request) -> tuple[list[_Request], list[_Request]]:
        """Requests batched with ``first`` (same spec, up to max_batch clips), and those left for later."""
        batch, later, size = [first], [], len(first.clips)
        deadline = time.monotonic() + self.max_delay
        while size < self.max_batch:
            try:
                req = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if req is None:  # close(): stop gathering, finish what we hold
                self._queue.put(None)
                break
            if req.spec == first.spec and size + len(req.clips) <= self.max_batch:
                batch.append(req)
                size += len(req.clips)
            else:
                later.append(req)
        return batch, later

    def _run(self) -> None:
        pending: list[_Request] = []
        while True:
            req = pending.pop(0) if pending else self._queue.get()
            if req is None:
                return
            batch, later = self._gather(req)
            pending.extend(later)
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                x = self.engine.sample_clips([c for r in live for c in r.clips], live[0].spec)
            except Exception as e:  # noqa: BLE001 - the batch's failure is each of its requests' failure
                for r in live:
                    r.future.set_exception(e)
                continue
            start = 0
            for r in live:
                part = x[start:start + len(r.clips)]
                start += len(r.clips)
                try:
                    r.future.set_result(self.engine.finish([c.label for c in r.clips], part))
                except Exception as e:  # noqa: BLE001 - e.g. NaN in this request's clips only
                    r.future.set_exception(e)

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting requests; finish the accepted ones (or fail those not started, with
        ``cancel_pending``), then stop the worker."""
        with self._lock:
            self._closed.set()
            if cancel_pending:
                while True:
                    try:
                        req = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if req is not None and req.future.set_running_or_notify_cancel():
                        req.future.set_exception(BatcherClosed("the batcher closed before this request ran"))
            self._queue.put(None)
        self._worker.join(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, *args, **kwargs) -> Generation:
        """``submit(...).result()``: a blocking call that still shares batches with other callers."""
        return self.submit(*args, **kwargs).result()
