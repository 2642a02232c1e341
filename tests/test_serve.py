"""tapdiff serve as a real server process, asked by a real HTTP client: answers equal the engine's alone,
bad requests get 422 with the reason, limits give 429."""
import io
import socket
import subprocess
import sys
import time
import wave
import zipfile

import httpx
import numpy as np
import pytest

from engine.api import Engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--checkpoint", str(tiny_checkpoint),
                             "--port", str(port), "--max-clips", "4", "--max-queued", "6", "--max-delay-ms", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _samples(wav: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767


def test_health_and_info(server, tiny_checkpoint):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    info = httpx.get(f"{server}/info").json()
    from engine.backends import resolve_backend

    assert info["labels"] == [1, 7] and info["backend"] == resolve_backend("auto") and info["limits"]["max_clips"] == 4


def test_answers_equal_the_engine_alone_one_wav_or_a_zip(server, tiny_checkpoint):
    engine = Engine(tiny_checkpoint)
    body = {"digit": 7, "n": 1, "seed": 3, "guidance": 2.0, "nfe": 3, "sampler": "dpmpp_2m"}
    one = httpx.post(f"{server}/generate", json=body, timeout=120)
    assert one.status_code == 200 and one.headers["content-type"] == "audio/wav"
    alone = engine.generate(7, n=1, seed=3, guidance=2.0, nfe=3, sampler="dpmpp_2m")
    assert np.abs(_samples(one.content) - alone.waves[0].numpy()).max() < 2e-3
    many = httpx.post(f"{server}/generate", json={**body, "digit": [1, 7], "n": 2}, timeout=120)
    assert many.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(many.content)).namelist()
    assert names == ["1_0.wav", "1_1.wav", "7_0.wav", "7_1.wav"]


@pytest.mark.parametrize("body,status,reason", [
    ({"digit": 3}, 422, "unknown digit 3"),
    ({"digit": 7, "n": 0}, 422, "greater than or equal to 1"),
    ({"digit": 7, "guidance": -1}, 422, "greater than or equal to 0"),
    ({"digit": 7, "sampler": "ddim"}, 422, "Input should be 'dpmpp_2m'"),
    ({"digit": 7, "seed": "x"}, 422, "seed"),
    ({"digit": [1, 7], "n": 3}, 429, "at most 4 per request"),
])
def test_bad_requests_are_refused_with_the_reason(server, body, status, reason):
    r = httpx.post(f"{server}/generate", json=body, timeout=60)
    assert r.status_code == status and reason in r.text


def test_queued_clips_beyond_the_limit_get_429_and_nothing_is_lost(server):
    import concurrent.futures as cf

    body = {"digit": 7, "n": 3, "nfe": 40, "sampler": "euler_maruyama"}
    with cf.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda s: httpx.post(f"{server}/generate", json={**body, "seed": s}, timeout=300).status_code,
                              range(4)))
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes  # 4 x 3 clips > 6 queued
    assert httpx.get(f"{server}/health").json()["queued_clips"] == 0
