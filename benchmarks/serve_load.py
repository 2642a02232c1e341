"""CLI: load test of ``tapdiff serve``: one process against Ray Serve replicas, concurrent clients against a real
server on loopback, every answer checked byte for byte against the same request made alone.

    python benchmarks/serve_load.py --clients 64 --out benchmarks/results/serve_load.md

Settings: one process with the in-process batcher on all the machine's threads; one process on one thread;
``--replicas 2`` (Ray Serve, ``@serve.batch``) with one thread per replica, waiting 20 ms and 200 ms for a batch to
fill. All batch-invariant (the default; free of padding with onnxruntime, the default backend) with batches of up to 16
clips. Each client sends one
request (one clip: digit i mod 10, seed i, the checkpoint's default solver); all start together. Per setting:
answers, how many are byte-identical to the same request made alone through the Python API at the server's
thread count (the WAV bytes; a batch-invariant Engine with the same batch size and backend), the largest sample
difference otherwise, latency p50 / p99 and clips per second over the whole burst. Traffic goes to 127.0.0.1
only; the run is bounded by ``--clients`` requests per setting and ``--timeout`` seconds per request.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
from report import emit, header, record

from engine.api import Engine
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


SERVING = re.compile(r"serving (?:\d+ replicas )?on (http://[^\s]+)")


def _serving_url(server: subprocess.Popen, seconds: float = 600) -> tuple[str, list[str]]:
    """The URL the server logs once it listens (it binds --port 0: a port the kernel picks, no race), read from its
    stderr, and its log lines so far; a thread keeps draining the log into them, so a full pipe never stalls it."""
    found: list[str] = []
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in server.stderr:
            lines.append(line)
            if not found and (m := SERVING.search(line)):
                found.append(m.group(1))
                ready.set()
        ready.set()  # the server exited

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(seconds) or not found:
        server.kill()
        raise RuntimeError("".join(lines)[-2000:] or "the server never said where it serves")
    return found[0], lines


def _samples(wav: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767


def run_setting(args, name: str, threads: int, replicas: int, delay_ms: float, reference: list[bytes]) -> dict:
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--checkpoint", args.checkpoint, "--port", "0",
           "--max-batch", "16", "--max-delay-ms", str(delay_ms), "--max-clips", "4", "--max-queued", str(4 * args.clients)]
    if replicas > 1:
        cmd += ["--replicas", str(replicas), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t_start = time.perf_counter()
    url, log = _serving_url(server)
    try:
        for _ in range(3000):  # Ray's start-up takes tens of seconds
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            if server.poll() is not None:
                raise RuntimeError("".join(log)[-2000:])
        if replicas > 1:  # the proxy answers before every replica is up: wait until both have answered
            seen = set()
            while len(seen) < replicas and time.perf_counter() - t_start < 600:
                text = httpx.get(f"{url}/metrics", timeout=30).text
                seen |= {line.split('replica="')[1].split('"')[0] for line in text.splitlines() if 'replica="' in line}
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
        server.wait(timeout=120)
    ok = [(i, a) for i, a in enumerate(answers) if a[1] == 200]
    identical = sum(a[2] == reference[i] for i, a in ok)
    diffs = [float(np.abs(_samples(a[2]) - _samples(reference[i])).max()) for i, a in ok]
    lat = sorted(a[0] for _, a in ok)
    return {"setting": name, "threads": threads, "replicas": replicas, "delay_ms": delay_ms, "answered": len(ok),
            "requests": len(answers),
            "identical": identical, "max_sample_diff": max(diffs) if diffs else None,
            "p50_s": statistics.median(lat) if lat else None,
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "clips_per_s": len(ok) / wall, "wall_s": wall}


def alone(args, threads: int) -> list[bytes]:
    """Each client's request made alone through the Python API at ``threads`` threads: its WAV bytes. The clips are
    sampled 16 at a time (a batch-invariant Engine gives each clip the rows it gets alone) and vocoded one by one,
    as a request of one clip is; the first two are checked against ``generate`` called alone."""
    from engine.api import Clip
    from engine.audio.wav import wav_bytes
    from engine.diffusion.guidance import DEFAULT_GUIDANCE

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = Engine(args.checkpoint, batch_size=16, batch_invariant=True)
        clips = [Clip(i % 10, DEFAULT_GUIDANCE, i, 0) for i in range(args.clients)]
        x = engine.sample_clips(clips, engine.sampler_spec())
        out = [wav_bytes(engine.finish([c.label], x[k:k + 1]).waves[0].numpy(), 16000) for k, c in enumerate(clips)]
        for i in range(min(2, len(out))):
            if wav_bytes(engine.generate(i % 10, n=1, seed=i).waves[0].numpy(), 16000) != out[i]:
                raise RuntimeError(f"clip {i} sampled in a batch differs from the request alone: not batch-invariant")
        return out
    finally:
        torch.set_num_threads(before)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    record(__file__)
    full = torch.get_num_threads()
    settings = [("1 process", full, 1, 20.0), ("1 process", 1, 1, 20.0), ("Ray Serve, 2 replicas", 1, 2, 20.0),
                ("Ray Serve, 2 replicas", 1, 2, 200.0)]
    references = {t: alone(args, t) for t in sorted({t for _, t, _, _ in settings})}
    rows = [run_setting(args, name, t, r, d, references[t]) for name, t, r, d in settings]
    spec = Engine(args.checkpoint).default_sampler.label()
    lines = [header(__file__),
             f"{args.clients} clients at once, one clip each ({spec}), server and clients on this 2-core machine; "
             "batch-invariant serving, batches of up to 16 clips. 'Identical': the answer's bytes equal "
             "the same request made alone through the Python API at the server's thread count.", "",
             "| server | torch threads each | batch wait ms | answered | identical to alone | max sample difference | "
             "p50 s | p99 s | clips/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['threads']} | {r['delay_ms']:g} | {r['answered']} / {r['requests']} | "
                     f"{r['identical']} / "
                     f"{r['answered']} | {r['max_sample_diff']:.1e} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | "
                     f"{r['clips_per_s']:.2f} |")
    base = next(r for r in rows if r["replicas"] == 1 and r["threads"] == full)
    lines += ["", "Throughput against one process on all threads: " + ", ".join(
        f"{r['setting']} ({r['threads']} thread{'s' if r['threads'] > 1 else ''} each, {r['delay_ms']:g} ms) "
        f"{r['clips_per_s'] / base['clips_per_s']:.2f}x" for r in rows if r is not base) + "."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
