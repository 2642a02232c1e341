"""``tapdiff serve``: the engine behind HTTP, with request batching (optional extra ``tapdiff[serve]``:
FastAPI + uvicorn).

- ``POST /generate`` {digit (or a list, or null), n, seed, guidance, nfe, sampler}: one clip as
  ``audio/wav``, several as a zip of WAVs (``{digit}_{index}.wav``). Requests are batched by a
  ``engine.batching.Batcher``; per-clip seeds make each answer the one the request gets alone.
- ``GET /health``, ``GET /info`` (checkpoint, model, labels, backend, defaults, limits).
- Bad requests get 422 with the reason; more clips than ``max_clips`` in one request, or more than
  ``max_queued`` clips waiting or running in all, get 429 instead of unbounded memory.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the request model's annotation at run time,
# and the model is defined inside create_app (FastAPI and pydantic are an optional extra).
import asyncio
import io
import threading
import zipfile

from .api import Engine, Generation
from .audio.wav import wav_bytes
from .batching import Batcher


def clips_to_response_body(out: Generation) -> tuple[bytes, str]:
    """(body, media type): one WAV, or a zip of WAVs named like ``Generation.save``."""
    if len(out.labels) == 1:
        return wav_bytes(out.waves[0].numpy(), out.sample_rate), "audio/wav"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, w in zip(out.names, out.waves):
            z.writestr(f"{name}.wav", wav_bytes(w.numpy(), out.sample_rate))
    return buf.getvalue(), "application/zip"


def create_app(engine: Engine, batcher: Batcher, max_clips: int = 64, max_queued: int = 256):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response
    from pydantic import BaseModel, Field

    class GenerateRequest(BaseModel):
        digit: int | list[int] | None = None
        n: int = Field(1, ge=1)
        seed: int = Field(0, ge=0)
        guidance: float = Field(3.0, ge=0, allow_inf_nan=False)
        nfe: int | None = Field(None, ge=1)
        sampler: str | None = None

    app = FastAPI(title="tapdiff", version="0.1.0")
    lock, queued = threading.Lock(), [0]

    def release(n: int):
        def done(_):
            with lock:
                queued[0] -= n
        return done

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "queued_clips": queued[0]}

    @app.get("/info")
    def info() -> dict:
        return {"checkpoint": str(engine.bundle.directory), "model": engine.model, "labels": list(engine.labels),
                "backend": engine.backend, "sampler": engine.default_sampler.label(), "guidance": 3.0,
                "vocoder": engine.vocoder_name, "sample_rate": engine.bundle.features.sample_rate,
                "limits": {"max_clips": max_clips, "max_queued": max_queued, "max_batch": batcher.max_batch,
                           "max_delay_ms": batcher.max_delay * 1000}}

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> Response:
        digits = 1 if req.digit is None or isinstance(req.digit, int) else len(req.digit)
        clips = req.n * max(digits, 1)
        if clips > max_clips:
            raise HTTPException(429, f"{clips} clips asked for; at most {max_clips} per request")
        with lock:
            if queued[0] + clips > max_queued:
                raise HTTPException(429, f"{queued[0]} clips are queued; at most {max_queued}: retry later")
            queued[0] += clips
        future = batcher.submit(req.digit, req.n, req.guidance, req.seed, req.sampler, nfe=req.nfe)
        future.add_done_callback(release(clips))
        try:
            out = await asyncio.wrap_future(future)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        body, media = clips_to_response_body(out)
        return Response(body, media_type=media)

    return app


def serve(engine: Engine, host: str, port: int, max_batch: int, max_delay_ms: float, max_clips: int,
          max_queued: int) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("tapdiff serve needs FastAPI and uvicorn: pip install 'tapdiff[serve]'") from e
    with Batcher(engine, max_batch=max_batch, max_delay_ms=max_delay_ms) as batcher:
        uvicorn.run(create_app(engine, batcher, max_clips, max_queued), host=host, port=port, log_level="warning")
