"""``tapdiff serve``: the engine behind HTTP, with request batching (optional extra ``tapdiff[serve]``:
FastAPI + uvicorn).

- ``POST /generate`` {digit (or a list, or null), n, seed, guidance, nfe, sampler, rho, guidance_fade, format}: one
  clip as ``audio/wav``, several as a zip of WAVs (``{digit}_{index}.wav``); ``"format": "json"``: every clip's WAV
  (base64) and log-Mel in one JSON answer (what the page draws). Requests are batched by a
  ``engine.batching.Batcher``, in turns of one batch, so a short request is not stuck behind a long one.
- ``GET /``: a page to try the engine (``engine.serve_page``).
- ``GET /health``, ``GET /info`` (checkpoint name and weights hash, model, labels, backend, defaults, limits),
  ``GET /metrics`` (Prometheus text: ``engine.metrics``). Every answer carries an ``X-Request-ID`` (the client's,
  or a new one), and each request is one JSON line logged at info on ``engine.serve.access`` (id, method, path,
  status, seconds), which ``tapdiff serve`` prints on stderr as it is.
- What a request may ask for is bounded (``engine.limits``): types are strict (``true`` is no digit, a
  string no number) and unknown fields are refused; values are checked by the Engine itself, as for the
  Python API and the CLI. Every bad request gets a 4xx with the reason: 422 for bad values, 413 for a body
  over ``max_body_bytes``, 408 for a body not received within ``body_timeout_s``, 429 for more clips than
  ``max_clips`` in a request or ``max_queued`` waiting in all, 504 for a request that ran past
  ``request_timeout_s``. A client that disconnects, or a request that times out, has its clips that have not
  run yet dropped and released from the queue count.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the request model's annotation at run time,
# and the model is defined inside create_app (FastAPI and pydantic are an optional extra).
import asyncio
import base64
import importlib.util
import io
import json
import logging
import re
import socket
import threading
import time
import uuid
import zipfile
from typing import Callable, Literal, Optional, Union

from .api import DEFAULT_GUIDANCE, Engine, Generation
from .audio.wav import wav_bytes
from .batching import Batcher, RequestCancelled
from .diffusion.solvers import SOLVERS
from .errors import MissingDependency, PortUnavailable
from .limits import ServerLimits
from .metrics import ServiceMetrics

logger = logging.getLogger(__name__)
access_log = logging.getLogger(f"{__name__}.access")  # one JSON line per answered request


def clips_to_json(out: Generation) -> dict:
    """Every clip's WAV (base64, the bytes a WAV answer holds) and natural-log Mel (rounded to 1e-3), with the
    range of the Mels (for one colour scale)."""
    return {"sample_rate": out.sample_rate,
            "mel_range": [round(float(out.mels.min()), 3), round(float(out.mels.max()), 3)],
            "clips": [{"name": name, "digit": label,
                       "wav": base64.b64encode(wav_bytes(w.numpy(), out.sample_rate)).decode("ascii"),
                       "mel": [[round(float(v), 3) for v in row] for row in mel]}
                      for name, label, w, mel in zip(out.names, out.labels, out.waves, out.mels)]}


def clips_to_response_body(out: Generation) -> tuple[bytes, str]:
    """(body, media type): one WAV, or a zip of WAVs named like ``Generation.save``."""
    if len(out.labels) == 1:
        return wav_bytes(out.waves[0].numpy(), out.sample_rate), "audio/wav"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, w in zip(out.names, out.waves):  # a fixed entry time: the same clips are the same bytes
            z.writestr(zipfile.ZipInfo(f"{name}.wav", date_time=(1980, 1, 1, 0, 0, 0)), wav_bytes(w.numpy(), out.sample_rate))
    return buf.getvalue(), "application/zip"


class BodyLimit:
    """ASGI middleware: a request body is read whole before the app sees it, at most ``max_bytes`` (413
    beyond, whether announced by Content-Length or not) within ``timeout_s`` (408 when the client sends
    less than it announced, or too slowly); then the app gets the body and, after it, the client's own
    messages (so a disconnect is still seen)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _plain(send, 413, f"request body over {self.max_bytes} bytes")
        body, more = b"", True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await _plain(send, 408, f"request body not received within {self.timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _plain(send, 413, f"request body over {self.max_bytes} bytes")
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a client's X-Request-ID is kept only if it is this
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def allowed_hosts_for(bind_host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to ``bind_host`` answers: a loopback bind only its own loopback names (so
    a web page cannot reach it by DNS rebinding); any other bind, None (every host: name them with
    ``--allowed-hosts`` where that matters)."""
    if bind_host not in LOOPBACK:
        return None
    return {h for name in LOOPBACK for h in (name, f"{name}:{port}")}


class HostCheck:
    """ASGI middleware: a request whose Host header is not among ``allowed`` gets 421 (Misdirected Request)."""

    def __init__(self, app, allowed: set[str]):
        self.app, self.allowed = app, {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").lower()
            if host not in self.allowed:
                return await _plain(send, 421, f"host {host[:100]!r} is not served here")
        return await self.app(scope, receive, send)


class Observed:
    """ASGI middleware: every HTTP answer gets a request id (the client's X-Request-ID, else a new one), is
    counted in the metrics by status, and is logged as one JSON line on ``access_log`` (id, method, path, status,
    seconds). Plain ASGI, not Starlette's BaseHTTPMiddleware, so the app still sees a client disconnect."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not REQUEST_ID.fullmatch(rid):  # never echo what an HTTP layer may refuse (spaces, controls, length)
            rid = uuid.uuid4().hex[:16]
        t0, status = time.monotonic(), [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1")),
                                                  *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - t0
            self.metrics.answered(status[0], seconds if scope["path"] == "/generate" else None)
            access_log.info(json.dumps({"request_id": rid, "method": scope.get("method"), "path": scope["path"],
                                        "status": status[0], "seconds": round(seconds, 4)}))


async def _plain(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, batcher: Batcher, limits: ServerLimits = ServerLimits(),
               metrics: ServiceMetrics | None = None, allowed_hosts: set[str] | None = None):
    """The FastAPI app over ``engine`` and ``batcher``; the per-request bounds are ``engine.limits``; ``metrics``
    (give the one whose ``on_batch`` the batcher reports to) is served at ``/metrics``; ``allowed_hosts``: the
    Host headers answered (None: any). Every answer, refusals included, carries a request id and security
    headers, is counted and logged. No interactive docs pages (they load third-party scripts): the schema is at
    ``/openapi.json``."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field

    bounds = engine.limits

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        digit: Optional[Union[int, list[int]]] = Field(None, description="a digit, a list of digits, or null")
        n: int = Field(1, ge=1, description=f"clips per digit (429 above {bounds.max_clips} clips in all)",
                       json_schema_extra={"maximum": bounds.max_clips})  # stated, and answered 429 by the handler
        seed: int = Field(0, ge=0, le=bounds.max_seed)
        guidance: float = Field(DEFAULT_GUIDANCE, ge=0, le=bounds.max_guidance, allow_inf_nan=False)
        nfe: Optional[int] = Field(None, ge=1, le=bounds.max_nfe, description="score evaluations per clip")
        sampler: Optional[Literal[tuple(sorted(SOLVERS))]] = None
        rho: Optional[float] = Field(None, gt=0, le=100, allow_inf_nan=False, description="Karras schedule rho")
        guidance_fade: Optional[float] = Field(None, ge=0, le=1000, allow_inf_nan=False,
                                               description="guidance fade sigma (default: the checkpoint's)")
        format: Literal["wav", "json"] = Field("wav", description="wav: a WAV or a zip of WAVs; json: each clip's "
                                                                  "WAV in base64 and its log-Mel")

    app = FastAPI(title="tapdiff", version="0.1.0", docs_url=None, redoc_url=None,
                  description=f"Limits: {bounds.max_clips} clips per request, {bounds.max_nfe} score evaluations per "
                              f"clip, {limits.max_queued} clips queued, {limits.max_body_bytes}-byte bodies, "
                              f"{limits.request_timeout_s:g} s per request.")
    lock, queued = threading.Lock(), [0]
    metrics = metrics or ServiceMetrics(engine.model_name, engine.backend)
    metrics.queued.set_function(lambda: queued[0])

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        from .serve_page import PAGE

        return HTMLResponse(PAGE)

    @app.get("/metrics")
    def prometheus() -> Response:
        body, media = metrics.render()
        return Response(body, media_type=media)

    @app.exception_handler(RequestValidationError)
    async def refused(_request, exc: RequestValidationError):
        # FastAPI's own handler echoes the input, which fails on NaN and Infinity: name the field instead
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    def release(n: int):
        def done(_):
            with lock:
                queued[0] -= n
        return done

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "queued_clips": queued[0], "clips_sampled": batcher.clips_sampled}

    @app.get("/info")
    def info() -> dict:
        weights = engine.bundle.weights_sha256("classifier") or ""
        return {"checkpoint": engine.bundle.directory.name, "classifier_sha256": weights[:16], "model": engine.model_name,
                "labels": list(engine.labels), "backend": engine.backend, "sampler": engine.default_sampler.label(),
                "guidance": DEFAULT_GUIDANCE, "vocoder": engine.vocoder_name, "samplers": sorted(SOLVERS),
                "sample_rate": engine.bundle.features.sample_rate,
                "limits": {"max_clips": bounds.max_clips, "max_nfe": bounds.max_nfe,
                           "max_guidance": bounds.max_guidance, "max_queued": limits.max_queued,
                           "max_body_bytes": limits.max_body_bytes, "request_timeout_s": limits.request_timeout_s,
                           "max_batch": batcher.max_batch, "max_delay_ms": batcher.max_delay * 1000}}

    @app.post("/generate", responses={200: {"content": {"audio/wav": {}, "application/zip": {}}}})
    async def generate(req: GenerateRequest, request: Request) -> Response:
        digits = 1 if req.digit is None or isinstance(req.digit, int) else len(req.digit)
        clips = req.n * max(digits, 1)
        if clips > bounds.max_clips:
            raise HTTPException(429, f"{clips} clips asked for; at most {bounds.max_clips} per request")
        with lock:
            if queued[0] + clips > limits.max_queued:
                raise HTTPException(429, f"{queued[0]} clips are queued; at most {limits.max_queued}: retry later")
            queued[0] += clips
        try:
            spec = engine.sampler_spec(req.sampler, nfe=req.nfe, rho=req.rho, fade_sigma=req.guidance_fade)
            engine.denoiser_for(spec, build=False)  # never an export while serving: only the fades built at start
            future = batcher.submit(req.digit, req.n, req.guidance, req.seed, spec=spec)
        except ValueError as e:
            release(clips)(None)
            raise HTTPException(422, str(e)) from None
        except BaseException:
            release(clips)(None)
            raise
        future.add_done_callback(release(clips))
        waiting = asyncio.ensure_future(asyncio.wrap_future(future))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout_s
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=min(0.25, max(0.0, deadline - loop.time())))
            if waiting.done():
                break
            if await request.is_disconnected():
                batcher.cancel(future)
                raise HTTPException(499, "the client disconnected")
            if loop.time() >= deadline:
                batcher.cancel(future)
                raise HTTPException(504, f"the request ran past {limits.request_timeout_s:g} s; its clips were dropped")
        try:
            out = waiting.result()
        except FloatingPointError:  # the request was valid: a fault of the server's, not the client's
            raise HTTPException(500, "sampling produced NaN or inf; the request id names it in the server's log") \
                from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        except (RequestCancelled, asyncio.CancelledError):
            raise HTTPException(503, "the request was cancelled") from None
        if req.format == "json":
            return JSONResponse(clips_to_json(out))
        body, media = clips_to_response_body(out)
        return Response(body, media_type=media)

    asgi = BodyLimit(app, limits.max_body_bytes, limits.body_timeout_s)
    if allowed_hosts is not None:
        asgi = HostCheck(asgi, allowed_hosts)
    return Observed(asgi, metrics), app


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's bound socket (``port`` 0: a free one), made before anything says it serves, so a taken port or
    a bad host fails here with an error naming them."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        raise PortUnavailable(f"cannot listen on {host}:{port}: {e}") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise PortUnavailable(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def closing_idle_connections(protocol_cls: type, idle_s: float) -> type:
    """``protocol_cls`` (uvicorn's HTTP protocol) that closes a connection with no request running and none begun
    in the last ``idle_s`` seconds: a client that connects and sends nothing, or trickles a request head that never
    completes, holds a connection at most ``2 * idle_s`` (uvicorn alone times out only an idle connection after a
    response). A request whose head has arrived is bounded by the body and request timeouts instead."""

    class ClosingIdle(protocol_cls):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._seen_cycle = self.cycle
            self._idle_check = self.loop.call_later(idle_s, self._close_if_idle)

        def _close_if_idle(self) -> None:
            running = self.cycle is not None and not self.cycle.response_complete
            if not running and self.cycle is self._seen_cycle:  # nothing ran and no new request head arrived
                self.transport.close()
                return
            self._seen_cycle = self.cycle
            self._idle_check = self.loop.call_later(idle_s, self._close_if_idle)

        def connection_lost(self, exc) -> None:
            self._idle_check.cancel()
            super().connection_lost(exc)

    ClosingIdle.__name__ = ClosingIdle.__qualname__ = f"ClosingIdle{protocol_cls.__name__}"
    return ClosingIdle


def _http_protocol() -> type:
    """The HTTP protocol uvicorn itself would choose: httptools' when installed, else h11's."""
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol
    return H11Protocol


def serve(engine: Engine, host: str, port: int, max_batch: int, max_delay_ms: float,
          limits: ServerLimits = ServerLimits(), allowed_hosts: set[str] | None = None,
          sock: socket.socket | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; ``port`` 0 takes a free port (the line saying where it serves names it);
    ``sock``: ``listening_socket(host, port)`` made earlier (the CLI binds before it loads the engine);
    ``allowed_hosts`` default: ``allowed_hosts_for(host, port)``; ``on_ready``: called with the URL once the server
    answers (the CLI prints it, so that ``-q`` still says where it serves)."""
    try:
        import uvicorn
    except ImportError as e:
        raise MissingDependency("tapdiff serve needs FastAPI and uvicorn: pip install 'tapdiff[serve]'") from e
    sock = sock if sock is not None else listening_socket(host, port)
    port = sock.getsockname()[1]
    metrics = ServiceMetrics(engine.model_name, engine.backend)
    with sock, Batcher(engine, max_batch=max_batch, max_delay_ms=max_delay_ms, on_batch=metrics.on_batch) as batcher:
        asgi, _ = create_app(engine, batcher, limits, metrics,
                             allowed_hosts if allowed_hosts is not None else allowed_hosts_for(host, port))

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started:
                    logger.info(f"serving on http://{host}:{port}")
                    if on_ready:
                        on_ready(f"http://{host}:{port}")

        config = uvicorn.Config(asgi, log_level="warning",
                                http=closing_idle_connections(_http_protocol(), limits.idle_timeout_s))
        Server(config).run(sockets=[sock])
