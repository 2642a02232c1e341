"""Output is all or none even under SIGINT, staging left by a killed run is removed by the next one, and a bad
--out or --batch-size fails in one line before any work (engine.storage.atomic, engine.limits)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from engine.storage import atomic
from engine.storage.atomic import STAGING_PREFIX, StagedFolder, signals_deferred, write_files_or_none


@pytest.fixture
def ctrl_c_interrupts():
    """SIGINT raising KeyboardInterrupt, as in a terminal: a process started in the background by a
    non-interactive shell (some CI runners) inherits SIGINT ignored, and Python then keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.core
def test_sigint_is_held_back_until_the_block_ends(ctrl_c_interrupts):
    got = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            got.append("finished the block")
    assert got == ["finished the block"]


@pytest.mark.parametrize("other_thread", [False, True])
def test_sigint_during_the_final_renames_leaves_all_files_not_some(tmp_path, monkeypatch, other_thread,
                                                                   ctrl_c_interrupts):
    """Also with another thread alive (a runtime's worker), which the kernel may hand the signal to."""
    import threading

    stop = threading.Event()
    if other_thread:
        threading.Thread(target=stop.wait, daemon=True).start()
    real_replace, done = os.replace, []

    def replace_then_interrupt(a, b):
        real_replace(a, b)
        done.append(b)
        if len(done) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the first rename

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_files_or_none(tmp_path / "out", {f"{k}.wav": b"x" * 10 for k in range(20)})
    stop.set()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{k}.wav" for k in range(20))


@pytest.mark.core
def test_staging_of_a_killed_run_is_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"{STAGING_PREFIX}{int(dead.stdout)}-abc"
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-def"
    for d in (orphan, live):
        d.mkdir()
        (d / "0_0.wav").write_bytes(b"partial")
    with StagedFolder(tmp_path) as staged:
        staged.write("a.wav", b"1")
    assert not orphan.exists() and live.exists() and (tmp_path / "a.wav").read_bytes() == b"1"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


@pytest.mark.parametrize("out,reason", [("", "output folder is empty"), ("dangling", "which does not exist")])
def test_an_empty_or_dangling_out_fails_in_one_line_before_generating(tmp_path, out, reason):
    if out == "dangling":
        (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    run = _cli("generate", "--digit", "7", "--nfe", "2", "--out", out, "--quiet", cwd=tmp_path)
    assert run.returncode == 2 and reason in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if out == "" else ["dangling"])


def test_a_huge_batch_size_is_refused_before_any_memory_is_taken(tmp_path):
    run = _cli("generate", "--digit", "7", "--nfe", "2", "--batch-size", "100000", "--out", "o", "--quiet",
               cwd=tmp_path)
    assert run.returncode == 2 and "Limits.max_batch" in run.stderr and "Traceback" not in run.stderr, run.stderr
