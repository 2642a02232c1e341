"""tapdiff serve --replicas 2: the same HTTP API under Ray Serve, as a real server process asked by a real HTTP
client. Sixteen concurrent requests get the bytes each gets alone, and the bytes the Python API gives with the
same settings at the replicas' thread count; bad requests are refused as by one process; metrics name the
replica; SIGTERM shuts Ray down."""
import concurrent.futures as cf
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
import torch

from engine.api import Engine
from engine.audio.wav import wav_bytes

if os.environ.get("CI") != "true":
    pytest.importorskip("ray.serve", reason="tapdiff[replicas] (Ray Serve) is not installed")


SERVING = re.compile(r"serving 2 replicas on (http://127\.0\.0\.1:\d+)")


def _until(condition, seconds: float, what: str):
    """``condition()``'s first truthy value, asked every 0.2 s; fails naming ``what`` after ``seconds`` (a bound on a
    hang, not a guess at how long something takes)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.2)
    return value


def _serving(proc) -> re.Match | None:
    log = open(proc.log_path).read()
    assert proc.poll() is None, log[-3000:]
    return SERVING.search(log)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint):
    """``--port 0``: the command takes a free port itself and holds it for Ray Serve's proxy (no port picked here and
    bound later, which another process could take in between); the line saying where it serves names it."""
    log = tempfile.NamedTemporaryFile(prefix="tapdiff-replicas-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--replicas", "2", "--threads", "1",
                             "--checkpoint", str(tiny_checkpoint), "--port", "0", "--max-batch", "8",
                             "--max-delay-ms", "200", "--max-clips", "4"], stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log.name
    try:
        url = _until(lambda: _serving(proc), 300, "the server to say where it serves").group(1)  # Ray: tens of s
        _until(lambda: _answers(url), 60, f"{url}/health to answer")
    except Exception:  # it died, or never said where it serves, or never answered there
        proc.kill()
        pytest.fail("tapdiff serve --replicas 2 did not come up:\n" + open(log.name).read()[-3000:])
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_sixteen_concurrent_requests_get_the_bytes_each_gets_alone_on_any_replica(replicas, tiny_checkpoint):
    url, _ = replicas
    bodies = [{"digit": [1, 7][i % 2] if i % 3 else [1, 7], "n": 1 + i % 2, "seed": i, "guidance": [0.0, 2.0, 3.0][i % 3],
               "nfe": 3} for i in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: httpx.post(f"{url}/generate", json=b, timeout=300), bodies))
    assert [r.status_code for r in together] == [200] * 16
    alone = [httpx.post(f"{url}/generate", json=b, timeout=300) for b in bodies]
    assert [r.content for r in together] == [r.content for r in alone]
    # both replicas answered, and the answers are the Python API's at the replicas' one thread
    metrics = [httpx.get(f"{url}/metrics", timeout=30).text for _ in range(20)]
    assert len({line.split('replica="')[1].split('"')[0] for m in metrics for line in m.splitlines()
                if line.startswith("tapdiff_requests_total") and 'replica="' in line}) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine(tiny_checkpoint, batch_size=8, batch_invariant=True)
        one = bodies[2]
        out = engine.generate(one["digit"], n=one["n"], seed=one["seed"], guidance=one["guidance"], nfe=3)
    finally:
        torch.set_num_threads(threads)
    assert alone[2].content == wav_bytes(out.waves[0].numpy(), 16000)


@pytest.mark.parametrize("body,status,reason", [
    ({"digit": 3}, 422, "unknown digit"),
    ({"digit": [1, 7], "n": 3}, 429, "at most 4"),
    ({"digit": 7, "guidance": True}, 422, "guidance"),
    ({"digit": 7, "color": "red"}, 422, "color"),
])
def test_bad_requests_are_refused_as_by_one_process(replicas, body, status, reason):
    r = httpx.post(f"{replicas[0]}/generate", json=body, timeout=60)
    assert r.status_code == status and reason in r.text and r.headers.get("x-request-id")


def test_a_foreign_host_header_is_refused_by_every_replica(replicas):
    """Bound to loopback, the replicas answer only loopback Host names (DNS rebinding), as one process does."""
    url = replicas[0]
    answers = [httpx.get(f"{url}/health", headers={"host": "rebound.example"}, timeout=30) for _ in range(6)]
    assert {r.status_code for r in answers} == {421} and all("rebound.example" in r.text for r in answers)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_every_replica_logs_its_requests_as_one_process_does(replicas):
    """Each request is one JSON line in the server's log, whichever replica answered (a replica shows its log
    records as the command that started it; letters only: Ray folds log lines that differ only in numbers)."""
    url, proc = replicas
    ids = [f"replica-log-{word}" for word in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")]
    for rid in ids:
        assert httpx.get(f"{url}/health", headers={"x-request-id": rid}, timeout=30).status_code == 200
    # Ray passes a replica's lines on to the driver in batches: wait for them (a bounded wait for the event)
    _until(lambda: all(rid in open(proc.log_path).read() for rid in ids), 60, "every request's log line")
    log = open(proc.log_path).read()
    assert all(f'"request_id": "{rid}"' in log for rid in ids), log[-3000:]


def test_sigterm_stops_the_replicas_and_ray(replicas):
    url, proc = replicas
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    log = open(proc.log_path).read()
    assert "Traceback" not in log.split("serving 2 replicas")[-1]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)


def test_a_taken_port_is_one_line_before_ray_starts(tiny_checkpoint, capsys):
    from engine.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--replicas", "2", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args,reason", [(["--replicas", "0"], "--replicas must be >= 2"),
                                         (["--replicas", "2", "--threads", "0"], "--threads must be >= 1")])
def test_bad_replica_settings_are_refused_before_ray_starts(tiny_checkpoint, args, reason, capsys):
    from engine.cli import main

    assert main(["serve", "--checkpoint", str(tiny_checkpoint), *args]) == 2
    assert reason in capsys.readouterr().err
