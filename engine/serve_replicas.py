"""``tapdiff serve --replicas N``: the same HTTP API (``engine.serve.create_app``) served by N Engine replicas
under Ray Serve (optional extra ``tapdiff[replicas]``: ``ray[serve]``).

- Each replica is one Ray actor holding its own Engine (batch-invariant, so its answers are the bytes the
  request gets alone, on any replica) and the FastAPI app as its ingress; Ray Serve's proxy routes HTTP
  requests across the replicas.
- Request batching inside a replica is Ray Serve's ``@serve.batch``: every clip of a request is one call,
  and the calls waiting in a replica are gathered into batches of up to ``max_batch`` clips, waiting up to
  ``max_delay_ms`` (``ServeBatcher``, which gives ``create_app`` the interface of ``engine.batching.Batcher``).
  Unlike the in-process batcher it serves clips first come, first served (no turns between requests).
- Backpressure (429 beyond ``max_queued`` clips waiting in a replica), the request limits, request ids and
  logs, timeouts and disconnects are those of ``create_app``, per replica. Ray Serve checks each replica's
  health (``check_health``: the engine answers) and replaces one that fails. ``/metrics`` is the metrics of
  the replica that answered the scrape (label ``replica``).
- The port is taken by this process before Ray starts (``reserve_port``; ``--port 0``: a free one) and held while
  it serves; Ray Serve's proxy listens on it beside the held socket, and the line saying where it serves names it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future
from typing import Callable

import torch

from .api import DEFAULT_GUIDANCE, Engine
from .diffusion.solvers import SamplerSpec
from .errors import InvalidInput, MissingDependency, PortUnavailable
from .limits import ServerLimits

logger = logging.getLogger(__name__)


class ServeBatcher:
    """What ``create_app`` needs of a batcher (``submit``, ``cancel``, ``clips_sampled``, ``max_batch``,
    ``max_delay``), over Ray Serve's ``@serve.batch``. Must be used from the replica's event loop (the app's
    handlers); sampling runs in a worker thread so the loop keeps answering health checks and disconnects."""

    def __init__(self, engine: Engine, max_batch: int = 16, max_delay_ms: float = 10.0, on_batch=None):
        from ray import serve

        if max_batch < 1 or max_delay_ms < 0:
            raise InvalidInput(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay_ms / 1000
        self.on_batch = on_batch
        self.clips_sampled = 0
        self._tasks: dict[Future, asyncio.Task] = {}
        self._sample_one = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=self.max_delay)(self._sample_batch)

    async def _sample_batch(self, items: list[tuple]) -> list[torch.Tensor]:
        """Serve's batch: (clip, spec) items, sampled one spec at a time, in arrival order."""
        out: list[torch.Tensor | None] = [None] * len(items)
        for spec in dict.fromkeys(spec for _, spec in items):
            where = [i for i, (_, s) in enumerate(items) if s == spec]
            clips = [items[i][0] for i in where]
            t0 = time.monotonic()
            x = await asyncio.to_thread(self.engine.sample_clips, clips, spec)
            self.clips_sampled += len(clips)
            if self.on_batch is not None:
                self.on_batch(len(clips), time.monotonic() - t0, spec)
            for i, row in zip(where, x):
                out[i] = row
        return out

    async def _request(self, clips, spec):
        rows = await asyncio.gather(*(self._sample_one((clip, spec)) for clip in clips))
        return await asyncio.to_thread(self.engine.finish, [c.label for c in clips], torch.stack(rows))

    def submit(self, digit=None, n: int = 1, guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
               spec: SamplerSpec | None = None) -> Future:
        """Like ``Batcher.submit`` (bad input fails the returned future); called on the replica's event loop."""
        future: Future = Future()
        try:
            clips = self.engine.request_clips(digit, n, guidance, seed)
            spec = self.engine.check_spec(spec) if spec is not None else self.engine.sampler_spec()
        except ValueError as e:
            future.set_exception(e)
            return future
        task = asyncio.get_running_loop().create_task(self._request(clips, spec))
        self._tasks[future] = task

        def settle(t: asyncio.Task) -> None:
            self._tasks.pop(future, None)
            if future.done():
                return
            if t.cancelled():
                future.cancel()
            elif t.exception() is not None:
                future.set_exception(t.exception())
            else:
                future.set_result(t.result())

        task.add_done_callback(settle)
        return future

    def cancel(self, future: Future) -> bool:
        """Drop the request's clips that Serve has not batched yet (its task is cancelled)."""
        task = self._tasks.get(future)
        if task is None:
            return False
        task.cancel()
        return True


def deployment(replicas: int, threads: int = 1, max_ongoing: int = 64):
    """The Ray Serve deployment class: one Engine and the FastAPI app per replica."""
    from ray import serve

    @serve.deployment(name="tapdiff", num_replicas=replicas, ray_actor_options={"num_cpus": 1},
                      max_ongoing_requests=max_ongoing, health_check_period_s=5, health_check_timeout_s=30,
                      graceful_shutdown_timeout_s=120)
    @serve.ingress()
    class TapdiffReplica:
        def __init__(self, engine_kwargs: dict, max_batch: int, max_delay_ms: float, limits: ServerLimits,
                     allowed_hosts: set[str] | None = None, log_level: int = logging.INFO):
            from ray import serve as ray_serve

            from .cli_logging import show_on_stderr
            from .metrics import ServiceMetrics

            show_on_stderr(log_level)  # this replica's records (its access log) as the process that started it shows
            torch.set_num_threads(threads)
            self.engine = Engine(**engine_kwargs)
            replica = ray_serve.get_replica_context().replica_id.unique_id
            self.metrics = ServiceMetrics(self.engine.model_name, self.engine.backend, replica=replica)
            self.batcher = ServeBatcher(self.engine, max_batch, max_delay_ms, self.metrics.on_batch)
            self.limits, self.allowed_hosts = limits, allowed_hosts

        def __serve_build_asgi_app__(self):
            from .serve import create_app

            asgi, _ = create_app(self.engine, self.batcher, self.limits, self.metrics, self.allowed_hosts)
            return asgi

        async def check_health(self) -> None:
            self.engine.request_clips(self.engine.labels[0], 1, DEFAULT_GUIDANCE, 0)  # raises if the engine is broken

    return TapdiffReplica


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: a free one, which the kernel picks), with SO_REUSEPORT, that never
    listens: it holds the port for Ray Serve's proxy, which binds the same address with SO_REUSEPORT too (Serve's
    default, ``SERVE_SOCKET_REUSE_PORT_ENABLED=1``) and is the only socket on it that listens, so every connection
    reaches the proxy. Ray Serve binds port 0 if asked, but nothing in it says which port its proxy got (the proxy
    keeps the 0 it was given) and a restarted proxy would get another; held here, the port is known before Ray
    starts, is the one the log names and the replicas' Host check uses, survives a proxy restart, and no other
    process can take it meanwhile (only a socket of this user asking for SO_REUSEPORT on this very port could share
    it). A taken port or a bad host fails here, with an error naming them, before the engine loads or Ray starts."""
    try:  # the address family Ray Serve's proxy uses: IPv6 for an IPv6 address, else IPv4
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PortUnavailable(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def serve_replicas(engine_kwargs: dict, replicas: int, host: str, port: int, max_batch: int, max_delay_ms: float,
                   limits: ServerLimits = ServerLimits(), threads: int = 1, allowed_hosts: set[str] | None = None,
                   log_level: int = logging.INFO, on_ready: Callable[[str], None] | None = None) -> None:
    """Start a local Ray instance, serve ``replicas`` replicas on ``host:port`` (``port`` 0: a free one; the line
    saying where it serves names it) until SIGTERM or Ctrl-C, then shut Serve down (each replica finishes its
    requests in flight, up to the graceful shutdown timeout). Each replica's app answers the Host headers
    ``allowed_hosts`` (default: ``engine.serve.allowed_hosts_for(host, port)``), as the single-process server does.
    Each replica shows its log records on stderr at ``log_level`` (``engine.cli_logging``), which Ray passes on to
    this process. ``on_ready``: called with the URL once Serve answers (the CLI prints it)."""
    from .serve import allowed_hosts_for

    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise MissingDependency("tapdiff serve --replicas needs Ray Serve: pip install 'tapdiff[replicas]'") from e
    if replicas < 2:
        raise InvalidInput(f"--replicas must be >= 2 for Ray Serve (1 is the in-process server), got {replicas}")
    if threads < 1:
        raise InvalidInput(f"--threads must be >= 1, got {threads}")
    with reserve_port(host, port) as held:  # a taken port fails now, not after the engine has loaded
        port = held.getsockname()[1]
        Engine(**engine_kwargs)  # bad arguments fail here, before Ray starts; builds the exported graphs once
        # Ray starts its workers at niceness 15; the replicas are this service's work, so they run at the caller's
        os.environ.setdefault("RAY_worker_niceness", "0")
        os.environ["SERVE_SOCKET_REUSE_PORT_ENABLED"] = "1"  # the proxy binds the port beside the held socket
        ray.init(num_cpus=replicas, include_dashboard=False, configure_logging=False, log_to_driver=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            serve.start(http_options={"host": host, "port": port})  # returns once the proxy listens
            hosts = allowed_hosts if allowed_hosts is not None else allowed_hosts_for(host, port)
            serve.run(deployment(replicas, threads).bind(engine_kwargs, max_batch, max_delay_ms, limits, hosts,
                                                         log_level),
                      name="tapdiff", route_prefix="/")
            logger.info(f"serving {replicas} replicas on http://{host}:{port}")
            if on_ready:
                on_ready(f"http://{host}:{port}")
            stop.wait()
        finally:
            serve.shutdown()
            ray.shutdown()
