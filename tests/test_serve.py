"""tapdiff serve as a real server process, asked by a real HTTP client: answers equal the engine's alone,
bad requests get 422 with the reason, limits give 429."""
import io
import json
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
import wave
import zipfile

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import Engine
from engine.audio.wav import wav_bytes


SERVING = re.compile(r"serving on (http://127\.0\.0\.1:\d+)")


def _start(checkpoint, *args):
    """A real ``tapdiff serve`` process on a port the server picks itself (``--port 0``; no port picked here and
    bound later, which another process could take in between): (url, process), once it says where it serves."""
    log = tempfile.NamedTemporaryFile(prefix="tapdiff-serve-", suffix=".log", delete=False)  # a pipe could fill up
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", "0", *args], stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log.name
    deadline = time.monotonic() + 120
    while not (found := SERVING.search(open(log.name).read())):
        assert proc.poll() is None, open(log.name).read()[-2000:]
        assert time.monotonic() < deadline, "the server never said where it serves"
        time.sleep(0.1)
    url = found.group(1)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    return url, proc


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _until(condition, seconds: float, what: str):
    """``condition()``'s first truthy value, asked every 50 ms; fails naming ``what`` after ``seconds``. A wait for
    an event the test can see (a log line, a counter), never a guess at how long something takes: the deadline
    only bounds a hang, and a slow machine waits longer instead of testing something else."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    url, proc = _start(tiny_checkpoint, "--max-clips", "4", "--max-queued", "6", "--max-delay-ms", "50")
    yield url
    _stop(proc)


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
    ({"digit": 7, "n": 100}, 429, "at most 4 per request"),
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


# ------------------------------------------------------------------------ hostile but honest clients (issue 20)
IDLE_S = "0.3"  # the strict server's idle timeout: short, so a request outlasts it many times over
STRICT = ("--max-clips", "4", "--max-nfe", "100", "--max-queued", "8", "--max-batch", "1", "--max-delay-ms", "0",
          "--max-body-bytes", "2048", "--body-timeout-s", "1", "--request-timeout-s", "30", "--idle-timeout-s", IDLE_S)


@pytest.fixture(scope="module")
def strict(tiny_checkpoint):
    """One clip per batch, small body and time limits: each behaviour below is visible in a second or two."""
    url, proc = _start(tiny_checkpoint, *STRICT)
    url_with_log = type("Url", (str,), {})(url)
    url_with_log.log_path = proc.log_path
    yield url_with_log
    _stop(proc)


def _raw(url: str, data: bytes, headers: dict | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/generate", content=data, headers={"content-type": "application/json", **(headers or {})},
                      timeout=timeout)


@pytest.mark.parametrize("body,reason", [
    (b'{"digit": 7, "guidance": NaN}', "guidance"),
    (b'{"digit": 7, "guidance": Infinity}', "guidance"),
    (b'{"digit": 7, "guidance": 1e308}', "less than or equal to 100"),
    (b'{"digit": 7, "nfe": 1000000000000}', "less than or equal to 100"),
    (b'{"digit": true}', "valid integer"),
    (b'{"digit": 7, "n": "2"}', "valid integer"),
    (b'{"digit": 7, "steps": 3}', "Extra inputs are not permitted"),
    (b'{"digit": 7, "seed": 99999999999999999999999}', "seed"),
    (b'[7]', "valid dictionary"),
    (b'{"digit": 7', "json_invalid"),
    (b'{"digit": 7, "nfe": 2, "rho": 0.001}', "no usable noise schedule"),
    (b'{"digit": 7, "nfe": 2, "guidance_fade": 0.5}', "no built graph here"),
])
def test_bad_values_are_422_with_the_reason_never_500(strict, body, reason):
    r = _raw(strict, body)
    assert r.status_code == 422 and reason in r.text, (r.status_code, r.text)


def test_a_large_body_is_413_and_a_short_body_408_without_holding_the_connection(strict):
    big = b'{"digit": 7, "pad": "' + b"x" * 20_000_000 + b'"}'
    r = _raw(strict, big)
    assert r.status_code == 413 and "2048 bytes" in r.text

    def chunks():
        yield b'{"digit": 7, "pad": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    r = httpx.post(f"{strict}/generate", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413  # no Content-Length: counted as it arrives
    with socket.create_connection(("127.0.0.1", int(strict.rsplit(":", 1)[1])), timeout=20) as s:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  b'{"digit": 7}')  # 12 of the 100 bytes announced
        # the missing 88 bytes are the input: the server's 1 s body timeout is what answers; 10 s only bounds a hang
        t0 = time.monotonic()
        answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and time.monotonic() - t0 < 10


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed ``sock`` (sending ``trickle`` every 0.2 s meanwhile), or None. The pace of
    the trickle is the input under test (a client too slow to finish a request head), not a way to order events:
    the server's close is seen as EOF or a reset, however long it takes to come, up to ``seconds``."""
    t0 = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
    return None


def test_idle_connections_and_request_heads_that_never_complete_are_closed(strict):
    """``--idle-timeout-s 0.3``: a connection that sends nothing, and one that trickles a request head a byte at a
    time, are closed within two idle periods (and scheduling slack); a request that runs longer than two idle
    periods on a kept-alive connection is answered in full (it is not idle while it runs), and the server serves
    on."""
    address = ("127.0.0.1", int(strict.rsplit(":", 1)[1]))
    with socket.create_connection(address) as idle:
        assert (took := _closed_within(idle, 10)) is not None and took < 4, took
    with socket.create_connection(address) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert (took := _closed_within(slow, 10, trickle=b"X")) is not None and took < 4, took
    body = json.dumps({"digit": 7, "n": 4, "nfe": 100}).encode()
    with httpx.Client(timeout=60) as client:
        t0 = time.monotonic()
        r = client.post(f"{strict}/generate", content=body, headers={"content-type": "application/json"})
        took = time.monotonic() - t0
        assert r.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 4
        assert took > 2 * float(IDLE_S), f"the request ran {took:.2f} s: too short to show a running request is not cut"
        assert client.get(f"{strict}/health").status_code == 200  # the same connection, kept alive


def test_a_taken_port_is_one_line_and_never_says_serving(tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--checkpoint", str(tiny_checkpoint),
                            "--port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "serving on" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_quiet_server_still_prints_where_it_serves(tiny_checkpoint):
    """-q quiets the log (stderr); the URL, the command's output, comes on stdout once the server answers."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "-q", "--checkpoint", str(tiny_checkpoint),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # a deadline against a server that never says
        url = proc.stdout.readline().strip() if ready else ""
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), (url, proc.poll())
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "serving on" not in err  # the log line itself was quieted


def test_info_does_not_expose_local_paths(strict, tiny_checkpoint):
    info = httpx.get(f"{strict}/info").text
    assert str(tiny_checkpoint) not in info and str(tiny_checkpoint.parent) not in info
    assert httpx.get(f"{strict}/info").json()["checkpoint"] == tiny_checkpoint.name


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def _settled(url: str, seconds: float = 120) -> dict:
    """/health once no clip is queued: every request's future has resolved (a request's clips are released from the
    count only then), so no clip of any earlier request can run any more and ``clips_sampled`` is final for them."""
    return _until(lambda: (h := _health(url))["queued_clips"] == 0 and h, seconds, "no clip queued")


def _access_log(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def _logged(path: str, request_id: str) -> dict | None:
    """The server's access-log line of the request ``request_id`` (written once the server is done with it)."""
    return next((e for e in _access_log(path) if e["request_id"] == request_id), None)


def test_a_client_that_disconnects_frees_its_queued_clips(strict):
    before = _settled(strict)["clips_sampled"]
    body = json.dumps({"digit": 7, "n": 4, "nfe": 100, "sampler": "euler_maruyama"}).encode()  # 4 batches of one clip
    with socket.create_connection(("127.0.0.1", int(strict.rsplit(":", 1)[1]))) as client:
        client.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"X-Request-ID: gone-away-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        # the client goes away while its request runs: once its first clip is sampled, three are still to come
        _until(lambda: _health(strict)["clips_sampled"] > before, 120, "the request's first clip")
    # the server logs its answer once it has seen the disconnect and cancelled what had not run
    assert _until(lambda: _logged(strict.log_path, "gone-away-1"), 60, "the request's log line")["status"] == 499
    after = _settled(strict)  # the request's future has resolved: none of its clips can run after this
    assert after["queued_clips"] == 0 and after["clips_sampled"] - before < 4, (before, after)


def test_a_short_request_is_not_stuck_behind_a_long_one(strict):
    import concurrent.futures as cf

    long = {"digit": 7, "n": 4, "nfe": 100, "sampler": "euler_maruyama", "seed": 1}  # 4 batches of one clip
    short = {"digit": 1, "n": 1, "nfe": 3, "seed": 2}
    before = _settled(strict)["clips_sampled"]

    def post(body, request_id):
        r = httpx.post(f"{strict}/generate", json=body, headers={"x-request-id": request_id}, timeout=120)
        return r.status_code

    with cf.ThreadPoolExecutor(1) as pool:
        long_code = pool.submit(post, long, "turns-long")
        # the short request comes once the long one is running (its first clip sampled, three to come)
        _until(lambda: _health(strict)["clips_sampled"] > before, 120, "the long request's first clip")
        assert post(short, "turns-short") == 200
        assert long_code.result(timeout=120) == 200
    # served in turn: after at most one of the long request's batches, so the server answered it first (its log is
    # in the order of the answers)
    order = [e["request_id"] for e in _access_log(strict.log_path) if e["request_id"] in ("turns-long", "turns-short")]
    assert order == ["turns-short", "turns-long"], order


def test_a_request_past_its_timeout_is_504_and_its_clips_are_dropped(tiny_checkpoint):
    args = [("1000" if a == "100" and STRICT[i - 1] == "--max-nfe" else a) for i, a in enumerate(STRICT[:-2])]
    url, proc = _start(tiny_checkpoint, *args, "--request-timeout-s", "1")
    try:
        before = _health(url)["clips_sampled"]
        # 4 batches of one clip at 1,000 evaluations: each takes seconds, far past the 1 s timeout
        r = httpx.post(f"{url}/generate", json={"digit": 7, "n": 4, "nfe": 1000, "sampler": "euler_maruyama"},
                       timeout=60)
        assert r.status_code == 504 and "1 s" in r.text
        after = _settled(url)  # the request's future has resolved: none of its clips can run after this
        assert after["clips_sampled"] - before < 4, (before, after)
    finally:
        _stop(proc)


REQUEST_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.integers(10**6, 10**20),
                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                           st.lists(st.integers(-2, 11), max_size=3), st.sampled_from(["heun", "dpmpp_2m", "x"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["digit", "n", "seed", "guidance", "nfe", "sampler", "rho",
                                             "guidance_fade", "format", "extra"]),
                            st.one_of(REQUEST_VALUES, st.floats(0, 0.02), st.sampled_from(["wav", "json"])),
                            max_size=7))
def test_any_request_gets_valid_audio_or_a_4xx_with_a_reason(strict, body):
    body.setdefault("nfe", 2)  # keep accepted requests cheap; other values of nfe are still drawn
    if isinstance(body.get("nfe"), int) and not isinstance(body["nfe"], bool) and body["nfe"] > 3:
        body["nfe"] = 3
    data = json.dumps(body, allow_nan=True).encode()
    r = _raw(strict, data, timeout=60)  # never a hang: a timeout raises and fails the test
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code == 200 and body.get("format") == "json":
        assert r.json()["clips"]
    elif r.status_code == 200:
        digits = body.get("digit")
        clips = body.get("n", 1) * (len(digits) if isinstance(digits, list) else 1)
        if clips == 1:
            assert len(_samples(r.content)) == 11520
        else:
            assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == clips
    else:
        assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.text)


def _metric(text: str, name: str, **labels) -> float:
    """The value of sample ``name`` whose labels include ``labels`` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    return 0.0


def test_metrics_count_what_was_served_and_every_answer_has_a_request_id(strict):
    before = httpx.get(f"{strict}/metrics").text
    r = httpx.post(f"{strict}/generate", json={"digit": [1, 7], "n": 1, "nfe": 2}, headers={"x-request-id": "abc123"},
                   timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc123"
    bad = httpx.post(f"{strict}/generate", json={"digit": 3}, timeout=60)
    assert bad.status_code == 422 and len(bad.headers["x-request-id"]) == 16
    after = httpx.get(f"{strict}/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    # 200s: the generate request and the first scrape (counted once answered)
    for name, labels, grew in [("tapdiff_requests_total", {"status": "200"}, 2), ("tapdiff_requests_total", {"status": "422"}, 1),
                               ("tapdiff_clips_generated_total", {}, 2), ("tapdiff_batch_clips_count", {}, 2),
                               ("tapdiff_score_evaluation_seconds_count", {}, 2), ("tapdiff_request_seconds_count", {}, 2)]:
        assert _metric(text, name, **labels) - _metric(before, name, **labels) == grew, name
    assert _metric(text, "tapdiff_queued_clips") == 0 and 'model="tapdiff"' in text and 'backend="' in text
    log = [json.loads(line) for line in open(strict.log_path) if line.startswith("{")]
    assert any(e["request_id"] == "abc123" and e["status"] == 200 and e["path"] == "/generate" for e in log)


@pytest.fixture(scope="module")
def batching_server(tiny_checkpoint):
    """Batches of up to 8 clips from many requests (batch-invariant, the default)."""
    url, proc = _start(tiny_checkpoint, "--max-clips", "4", "--max-queued", "64", "--max-batch", "8",
                       "--max-delay-ms", "200")
    yield url
    _stop(proc)


def test_sixteen_concurrent_requests_get_the_bytes_each_gets_alone(batching_server, tiny_checkpoint):
    import concurrent.futures as cf

    bodies = [{"digit": [1, 7][i % 2] if i % 3 else [1, 7], "n": 1 + i % 2, "seed": i, "guidance": [0.0, 2.0, 3.0][i % 3],
               "nfe": 3} for i in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: httpx.post(f"{batching_server}/generate", json=b, timeout=300), bodies))
    assert all(r.status_code == 200 for r in together)
    sampled = _health(batching_server)["clips_sampled"]
    alone = [httpx.post(f"{batching_server}/generate", json=b, timeout=300) for b in bodies]
    assert [r.content for r in together] == [r.content for r in alone]
    # and through the Python API with the same settings
    engine = Engine(tiny_checkpoint, batch_size=8, batch_invariant=True)
    one = bodies[2]  # one clip: a WAV
    out = engine.generate(one["digit"], n=one["n"], seed=one["seed"], guidance=one["guidance"], nfe=3)
    assert alone[2].content == wav_bytes(out.waves[0].numpy(), 16000)
    assert sampled > 0


def test_sigterm_finishes_the_requests_in_flight_before_the_server_exits(tiny_checkpoint):
    import concurrent.futures as cf
    import signal

    url, proc = _start(tiny_checkpoint, *STRICT)
    try:
        body = {"digit": 7, "n": 4, "nfe": 100, "sampler": "euler_maruyama"}  # about 2 s of sampling here
        with cf.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"{url}/generate", json=body, timeout=120)
            # SIGTERM once the server has accepted the request and not yet finished it (its 4 clips are queued)
            _until(lambda: _health(url)["queued_clips"] == 4, 120, "the request to be accepted")
            proc.send_signal(signal.SIGTERM)
            r = answer.result(timeout=120)
        assert r.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 4
        # uvicorn drains, then re-raises the signal it caught: the exit status says SIGTERM, the log no failure
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in open(proc.log_path).read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_refusals_carry_an_id_and_security_headers_are_logged_and_counted(strict):
    """413 (and every other refusal) passes through the same request id, headers, log line and counter as a 200;
    a client's X-Request-ID that an HTTP layer could refuse (a space, over 64 characters) is replaced, never
    echoed, so the client always gets its answer."""
    before = httpx.get(f"{strict}/metrics").text
    r = _raw(strict, b"x" * 5000, headers={"x-request-id": "big-body-1"})
    assert r.status_code == 413 and r.headers["x-request-id"] == "big-body-1"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    for hostile in ("a" * 63 + " x", "a b", "a" * 65, "caf\u00e9"):
        h = httpx.get(f"{strict}/health", headers={"x-request-id": hostile.encode("utf-8")}, timeout=10)
        assert h.status_code == 200 and h.headers["x-request-id"] != hostile and len(h.headers["x-request-id"]) == 16
    after = httpx.get(f"{strict}/metrics").text
    assert _metric(after, "tapdiff_requests_total", status="413") - _metric(before, "tapdiff_requests_total", status="413") == 1
    log = [json.loads(line) for line in open(strict.log_path) if line.startswith("{")]
    assert any(e["request_id"] == "big-body-1" and e["status"] == 413 for e in log)


def test_a_foreign_host_header_is_refused_and_docs_load_no_third_party_script(strict):
    """A loopback server answers only its loopback names (no DNS rebinding from a web page), and serves no
    interactive docs pages (they load scripts from a CDN); its schema stays at /openapi.json."""
    r = httpx.get(f"{strict}/health", headers={"host": "evil.example"}, timeout=10)
    assert r.status_code == 421 and "evil.example" in r.text and "x-request-id" in r.headers
    assert httpx.get(f"{strict}/health", headers={"host": "localhost"}, timeout=10).status_code == 200
    assert httpx.get(f"{strict}/docs", timeout=10).status_code == 404
    assert httpx.get(f"{strict}/redoc", timeout=10).status_code == 404
    assert "/generate" in httpx.get(f"{strict}/openapi.json", timeout=10).json()["paths"]


@pytest.mark.core
def test_a_nan_from_sampling_is_a_500_with_a_request_id_not_a_422():
    """A valid request whose sampling fails numerically is the server's fault: 500, its request id, no trace."""
    import asyncio
    from concurrent.futures import Future

    from engine.api import Engine
    from engine.metrics import ServiceMetrics
    from engine.serve import create_app

    class FailingBatcher:
        clips_sampled, max_batch, max_delay = 0, 1, 0.0

        def submit(self, *args, **kwargs):
            f = Future()
            f.set_exception(FloatingPointError("sampling produced NaN or inf"))
            return f

        def cancel(self, future):
            pass

    engine = Engine(backend="torch")
    asgi, _ = create_app(engine, FailingBatcher(), metrics=ServiceMetrics(engine.model_name, engine.backend))

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://127.0.0.1") as c:
            return await c.post("/generate", json={"digit": 7, "nfe": 2}, headers={"x-request-id": "nan-1"})

    r = asyncio.run(post())
    assert r.status_code == 500 and r.headers["x-request-id"] == "nan-1"
    assert "NaN" in r.json()["detail"] and "Traceback" not in r.text
