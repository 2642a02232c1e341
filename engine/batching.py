"""Request batching in process: ``Batcher(engine).submit(...) -> Future[Generation]``.

A worker thread samples batches of up to ``max_batch`` clips (one solver and budget per batch). Requests are
split into such chunks and served in turn: each batch starts with the next waiting request's next chunk and
fills its free room with the clips of other requests of the same spec, so a short request waits for at most
one batch behind a long one, never for the long one's whole run. A batch that is not full waits up to
``max_delay_ms`` for requests to join it. Per-clip seeds make a request's result the one it would get alone,
whatever it was batched with (up to the last bits of batched sums).

Each request's error (bad input, a failed batch) goes to its own future; ``cancel(future)`` drops what a
request has not yet run (a client that went away); ``close()`` finishes what was accepted (or fails it with
``cancel_pending=True``) and never leaves a future unresolved.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from .api import DEFAULT_GUIDANCE, Clip, Engine, Generation
from .deprecation import renamed_keyword
from .diffusion.solvers import SamplerSpec
from .errors import InvalidInput, TapdiffError


class BatcherClosed(TapdiffError, RuntimeError):
    """A request submitted to, or still waiting in, a closed batcher."""


class RequestCancelled(TapdiffError, RuntimeError):
    """A request cancelled (``Batcher.cancel``) before all its clips ran."""


@dataclass(eq=False)
class _Request:
    clips: list[Clip]
    spec: SamplerSpec
    future: Future
    scheduled: int = 0  # clips handed to batches so far
    parts: list[torch.Tensor] = field(default_factory=list)  # sampled chunks, in clip order
    cancelled: bool = False

    @property
    def remaining(self) -> int:
        return len(self.clips) - self.scheduled


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, max_delay_ms: float = 10.0,
                 on_batch: Callable[[int, float, SamplerSpec], None] | None = None):
        """``on_batch(clips, seconds, spec)`` is told of every sampled batch (for metrics)."""
        if max_batch < 1 or max_delay_ms < 0:
            raise InvalidInput(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay_ms / 1000
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.RLock()  # close() resolves futures under it, whose callbacks take it again
        self._requests: dict[Future, _Request] = {}
        self.clips_sampled = 0  # clips that went through the sampler (cancelled requests' clips stop counting up)
        self.on_batch = on_batch
        self._worker = threading.Thread(target=self._run, name="tapdiff-batcher", daemon=True)
        self._worker.start()

    @renamed_keyword("labels", "digit")
    def submit(self, digit=None, n: int = 1, guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
               sampler: str | None = None, steps: int | None = None, nfe: int | None = None,
               spec: SamplerSpec | None = None) -> Future:
        """Like ``Engine.generate``, asynchronously. Bad input fails the returned future, not the caller."""
        future: Future = Future()
        try:
            clips = self.engine.request_clips(digit, n, guidance, seed)
            if spec is not None and (sampler, steps, nfe) != (None, None, None):
                raise InvalidInput("give spec or sampler/steps/nfe, not both")
            spec = self.engine.check_spec(spec) if spec is not None else self.engine.sampler_spec(sampler, steps, nfe)
        except ValueError as e:
            future.set_exception(e)
            return future
        with self._lock:  # no request slips in after close() has drained the queue
            if self._closed.is_set():
                future.set_exception(BatcherClosed("the batcher is closed"))
                return future
            request = _Request(clips, spec, future)
            self._requests[future] = request
            future.add_done_callback(self._forget)
            self._queue.put(request)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._requests.pop(future, None)

    def cancel(self, future: Future) -> bool:
        """Drop what the request of ``future`` has not run yet: a waiting request is cancelled, a running one
        fails with ``RequestCancelled`` before its next batch (the batch it is in finishes). False if it had
        already finished."""
        with self._lock:
            request = self._requests.get(future)
            if request is None:
                return False
            request.cancelled = True
        return future.cancel() or not future.done()

    # ------------------------------------------------------------------------------------------------ worker
    def _take(self, active: list[_Request], timeout: float | None) -> bool:
        """Move newly submitted requests into ``active`` (waiting up to ``timeout`` for the first one; None:
        as long as it takes); False once close() has been called and nothing more will come."""
        try:
            req = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return True
        while True:
            if req is None:
                self._queue.put(None)  # seen again by the next _take: the worker stops when nothing is left
                return False
            active.append(req)
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _fill(self, batch: list[tuple[_Request, int, int]], candidates: list[_Request]) -> None:
        """Add clips of ``candidates`` (in order) that share the batch's spec, up to max_batch clips; a request
        starts (its future runs) when it first gets a place. Called under the lock, like close()."""
        room = self.max_batch - sum(count for _, _, count in batch)
        for req in candidates:
            if room == 0:
                return
            if req.future.done() or req.cancelled or req.remaining == 0 or (batch and req.spec != batch[0][0].spec):
                continue
            if not req.future.running() and not req.future.set_running_or_notify_cancel():
                continue  # cancelled while waiting
            count = min(room, req.remaining)
            batch.append((req, req.scheduled, count))
            req.scheduled += count
            room -= count

    @staticmethod
    def _finished(req: _Request) -> bool:
        """Whether ``req`` needs no more batches (resolving a running request that was cancelled)."""
        if req.cancelled and req.future.running():
            req.future.set_exception(RequestCancelled("the request was cancelled before all its clips ran"))
        return req.future.done() or req.remaining == 0

    def _run(self) -> None:
        active: list[_Request] = []  # in turn order: the next batch starts with active[0]
        open_ = True
        while True:
            if not active:
                if not open_:
                    return
                open_ = self._take(active, None)
            elif open_:
                open_ = self._take(active, 0)
            active[:] = [r for r in active if not self._finished(r)]
            if not active:
                continue
            batch: list[tuple[_Request, int, int]] = []
            with self._lock:
                self._fill(batch, active)
            deadline = time.monotonic() + self.max_delay
            while (batch and open_ and sum(c for _, _, c in batch) < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):  # a batch not full waits for requests to join
                joined = len(active)
                open_ = self._take(active, left)
                with self._lock:
                    self._fill(batch, active[joined:])
            active.append(active.pop(0))  # the next batch starts with the next request
            if batch:
                self._sample(batch)

    def _sample(self, batch: list[tuple[_Request, int, int]]) -> None:
        clips = [c for req, start, count in batch for c in req.clips[start:start + count]]
        try:
            t0 = time.monotonic()
            x = self.engine.sample_clips(clips, batch[0][0].spec)
            self.clips_sampled += len(clips)
            if self.on_batch is not None:
                self.on_batch(len(clips), time.monotonic() - t0, batch[0][0].spec)
        except Exception as e:  # noqa: BLE001 - the batch's failure is each of its requests' failure
            for req, _, _ in batch:
                if not req.future.done():
                    req.future.set_exception(e)
            return
        offset = 0
        for req, _, count in batch:
            req.parts.append(x[offset:offset + count])
            offset += count
            if req.remaining == 0 and sum(len(p) for p in req.parts) == len(req.clips) and not req.future.done():
                try:
                    req.future.set_result(self.engine.finish([c.label for c in req.clips], torch.cat(req.parts)))
                except Exception as e:  # noqa: BLE001 - e.g. NaN in this request's clips only
                    req.future.set_exception(e)

    # ------------------------------------------------------------------------------------------------ closing
    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting requests; finish the accepted ones (or fail those not started, with
        ``cancel_pending``), then stop the worker."""
        with self._lock:
            self._closed.set()
            if cancel_pending:
                for req in list(self._requests.values()):
                    if req.scheduled == 0 and req.future.set_running_or_notify_cancel():
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
