"""CLI: load test of ``tapdiff serve``: concurrent clients against a real server process on loopback, with
request batching on and off, every answer checked against the same request made alone.

    python benchmarks/serve_load.py --clients 64 --out benchmarks/results/serve_load.md

Each client sends one request (one clip: digit i mod 10, seed i, the checkpoint's default solver); all
start together. Per setting: every request answered?, the largest difference of an answer's samples from
the same request generated alone by an in-process Engine (16-bit WAV: one step is 3.1e-5), latency p50 /
p99 and clips per second over the whole burst. Traffic goes to 127.0.0.1 only; the run is bounded by
``--clients`` requests per setting and ``--timeout`` seconds per request.
"""
from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from report import emit, header, record

from engine.api import Engine
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(wav: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767


def run_setting(args, max_batch: int, max_delay_ms: float, reference: list[np.ndarray]) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
           "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), "--max-clips", "4",
           "--max-queued", str(4 * args.clients)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()[-2000:])
        start = threading.Barrier(args.clients)

        def client(i: int):
            start.wait()
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/generate", json={"digit": i % 10, "n": 1, "seed": i}, timeout=args.timeout)
            return time.perf_counter() - t0, r.status_code, r.content

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    ok = [a for a in answers if a[1] == 200]
    diffs = [float(np.abs(_samples(a[2]) - reference[i]).max()) for i, a in enumerate(answers) if a[1] == 200]
    lat = sorted(a[0] for a in ok)
    return {"max_batch": max_batch, "max_delay_ms": max_delay_ms, "answered": len(ok), "requests": len(answers),
            "max_sample_diff": max(diffs) if diffs else None, "p50_s": statistics.median(lat) if lat else None,
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "clips_per_s": len(ok) / wall, "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    record(__file__)
    engine = Engine(args.checkpoint)
    reference = [np.round(engine.generate(i % 10, n=1, seed=i).waves[0].numpy().clip(-1, 1) * 32767) / 32767
                 for i in range(args.clients)]
    rows = [run_setting(args, 16, 20.0, reference), run_setting(args, 1, 0.0, reference)]
    lines = [header(__file__),
             f"{args.clients} clients at once, one clip each ({engine.default_sampler.label()}), server and clients on "
             "this 2-core machine.", "",
             "| batching | answered | max sample difference from alone | p50 s | p99 s | clips/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = "off (max-batch 1)" if r["max_batch"] == 1 else f"on (max-batch {r['max_batch']}, {r['max_delay_ms']:g} ms)"
        lines.append(f"| {name} | {r['answered']} / {r['requests']} | {r['max_sample_diff']:.1e} | {r['p50_s']:.2f} | "
                     f"{r['p99_s']:.2f} | {r['clips_per_s']:.2f} |")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
