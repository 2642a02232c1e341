"""How much one request may ask for: the bounds that keep a request's memory and time within a stated budget,
checked the same way by the Python API, the CLI and the server (``Engine.request_clips`` and
``Engine.sampler_spec`` refuse what exceeds them with an ``InvalidInput`` naming the limit).

Memory: sampling holds one chunk of ``Engine.batch_size`` clips at a time, and a chunk's noise is drawn up
front: ``nfe x batch x 80 x 72 x 4`` bytes (at most 2 draws per evaluation), 37 MB at the default 100 NFE and
batch 16; the finished clips of a request are 69 KB each (log-Mel and waveform), 4.4 MB at 64 clips. Time:
a score evaluation of one clip costs about 20 ms guided on this project's 2-core CPU (benchmarks/results/
bench_2026-11-29), so a request at the server's limits (64 clips x 100 NFE) would run about 2 minutes there
(arithmetic, not timed), and the server's request timeout (default 120 s) frees its clips if it takes longer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InvalidInput


def _all_positive(limits) -> None:
    for f in fields(limits):
        v = getattr(limits, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InvalidInput(f"limit {f.name} must be a finite number > 0, got {v!r}")


@dataclass(frozen=True)
class Limits:
    max_clips: int = 1024  # clips per request (digits x n); the server's default is 64
    max_nfe: int = 100  # score evaluations per clip (the solver sweeps went up to 100)
    max_guidance: float = 100.0  # classifier guidance strength gamma (the shipped default is 3)
    max_seed: int = 2**63 - 1  # request seeds are mixed into 63-bit clip seeds
    max_fades: int = 4  # guidance fades an Engine keeps a built denoiser for (each an exported graph pair)
    max_batch: int = 256  # clips per sampler batch: its noise alone is nfe x batch x 23 KB, 0.6 GB at 256 and 100 NFE

    __post_init__ = _all_positive


@dataclass(frozen=True)
class ServerLimits:
    """What the HTTP service adds to the per-request ``Limits``: how much waits, how large and slow a request
    body may be, how long a request may run, how long a connection may sit idle."""

    max_queued: int = 256  # clips waiting or running in all before 429
    max_body_bytes: int = 16 * 1024  # a request's JSON body (a valid one is under 200 bytes)
    body_timeout_s: float = 10.0  # time to receive the whole body before 408
    request_timeout_s: float = 120.0  # time a request may wait and run before 504 (its clips are freed)
    idle_timeout_s: float = 10.0  # a connection with no request running and none begun in this time is closed

    __post_init__ = _all_positive
