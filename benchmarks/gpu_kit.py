"""The GPU kit: the GPU tests (``tests/gpu``, pytest) and the GPU timing (``benchmarks/gpu_timing.py``) in one
command, into one results file.

    python benchmarks/gpu_kit.py --out DIR [--budget-s 480] [--tests PATH ...]

From the repository root of a bare GPU machine (no network, no install; the shipped checkpoint only, no dataset).
It writes ``DIR/gpu_kit.md`` (provenance: command, commit, machine and GPU, threads, versions; every test's
outcome with its detail, skip reason or failure; the timing tables) and ``DIR/gpu_kit.json`` (the same as data),
both atomically, and exits 1 if a test failed, a test process died or timed out, or the timing failed.

- Tests: ``python -m pytest -p gpu_kit -p no:cacheprovider -m gpu FILE`` in a process of its own per test module
  (a sticky CUDA error or a crash in one module cannot fail the others). This file is also that pytest plugin:
  it appends each test's outcome, message and recorded properties to a file as the test ends, so a process that
  dies or is killed still leaves the outcomes before it, and the test it was running is named.
- Timing: ``benchmarks/gpu_timing.py`` in its own process after the tests, with what is left of the budget (at
  most 240 s).

Sizing (``--budget-s``, 480 by default, under the lent machine's 10 minutes a command): the test processes get
the budget less 150 s kept for the timing; the timing gets what is left less 60 s (its start, the Engines' load,
the reference matmul), at most 240 s, and cuts whole lines when its share runs out; each process is killed at
its deadline. Estimate on an H100 (nothing here has run on a GPU yet): the tests ~2-3 min (Triton compiles the
kernels for about 20 parametrisations, ~8 solvers captured, a CPU Engine run of 4 clips x 15 steps, one ONNX
export), the timing 4 min, starts ~30 s: ~7 min. On a machine without CUDA every GPU test is skipped with the
reason and the timing is its CPU smoke run: the whole command takes well under a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVENTS_ENV = "TAPDIFF_GPU_KIT_EVENTS"
TIMING_RESERVE_S, TIMING_MAX_S, TIMING_START_S = 150.0, 240.0, 60.0
MIN_MODULE_S = 10.0  # a test module is not started with less of the budget left


# ---------------------------------------------------------------------------------------------- pytest plugin
def _event(record: dict) -> None:
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def pytest_runtest_logstart(nodeid, location):
    _event({"event": "start", "nodeid": nodeid})


def pytest_runtest_logfinish(nodeid, location):
    _event({"event": "finish", "nodeid": nodeid})


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    lines = str(report.longrepr).strip().splitlines()
    return lines[-1] if lines else ""


def pytest_runtest_logreport(report):
    if report.when != "call" and report.passed:
        return
    _event({"event": "report", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
            "seconds": round(report.duration, 3), "message": "" if report.passed else _message(report),
            "text": "" if not report.failed else "\n".join(report.longreprtext.splitlines()[-40:]),
            "properties": dict(report.user_properties)})


def pytest_collectreport(report):
    if report.failed:
        _event({"event": "report", "nodeid": report.nodeid, "when": "collect", "outcome": "failed", "seconds": 0.0,
                "message": _message(report), "text": "\n".join(report.longreprtext.splitlines()[-40:]),
                "properties": {}})


# ------------------------------------------------------------------------------------------------ the run
def _merge(events: list[dict]) -> tuple[list[dict], str | None]:
    """One entry per test (a failure in any phase fails it, a skip in setup skips it), and the test that was
    running when the process ended (None when every started test reported its end)."""
    tests: dict[str, dict] = {}
    running = None
    for e in events:
        if e["event"] in ("start", "finish"):
            running = e["nodeid"] if e["event"] == "start" else None
            continue
        t = tests.setdefault(e["nodeid"], {"test": e["nodeid"], "outcome": "passed", "seconds": 0.0, "message": "",
                                           "text": "", "properties": {}})
        t["seconds"] = round(t["seconds"] + e["seconds"], 3)
        t["properties"].update(e["properties"])
        rank = {"passed": 0, "skipped": 1, "failed": 2}
        if rank[e["outcome"]] > rank[t["outcome"]]:
            t.update(outcome=e["outcome"], message=e["message"], text=e["text"])
    return list(tests.values()), running


def module_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("test_*.py")) if p.is_dir() else [p]
    return files


def run_tests(paths: list[str], deadline: float, python: str = sys.executable) -> tuple[list[dict], list[dict]]:
    """Each test module in a pytest process of its own: (every test's outcome, every module process's end)."""
    tests, modules = [], []
    for f in module_files(paths):
        name = os.path.relpath(f, ROOT) if f.is_absolute() else str(f)
        left = deadline - time.time()
        if left < MIN_MODULE_S:
            modules.append({"module": name, "status": "not run", "problem": f"the budget ran out ({left:.0f} s left)"})
            continue
        with tempfile.TemporaryDirectory(prefix="gpu_kit_") as tmp:
            events_file = Path(tmp) / "events.jsonl"
            env = {**os.environ, EVENTS_ENV: str(events_file),
                   "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH")) if p)}
            cmd = [python, "-m", "pytest", "-p", "gpu_kit", "-p", "no:cacheprovider", "-m", "gpu", "-q", str(f)]
            t0 = time.time()
            sys.stdout.flush()
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = None
            events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
        done, running = _merge(events)
        status = {"module": name, "status": "ok", "returncode": rc, "seconds": round(time.time() - t0, 1)}
        ended = f"timed out after {left:.0f} s (the budget)" if rc is None else f"exited with status {rc}"
        if rc not in (0, 1) or (rc == 1 and not any(t["outcome"] == "failed" for t in done)):
            status.update(status="failed", problem=f"pytest {ended}" + (f" while running {running}" if running else "")
                          + f" after {len(done)} test(s)")
            if running:
                done.append({"test": running, "outcome": "failed", "seconds": 0.0, "message": status["problem"],
                             "text": "", "properties": {}})
        tests += done
        modules.append(status)
    return tests, modules


def run_timing(budget_s: float, python: str = sys.executable) -> dict:
    """``benchmarks/gpu_timing.py`` in a process of its own: its results, or what went wrong."""
    with tempfile.TemporaryDirectory(prefix="gpu_kit_timing_") as tmp:
        out = Path(tmp) / "timing.json"
        cmd = [python, str(HERE / "gpu_timing.py"), "--budget-s", f"{budget_s:.0f}", "--json", str(out)]
        sys.stdout.flush()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=budget_s + TIMING_START_S + 30, stderr=subprocess.PIPE,
                                  text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {budget_s + TIMING_START_S + 30:.0f} s"}
        sys.stderr.write(proc.stderr)
        if not out.exists():
            return {"error": f"exited with status {proc.returncode}", "stderr_tail": proc.stderr.splitlines()[-30:]}
        return json.loads(out.read_text())  # status 1 with results: some lines failed (their "errors")


def environment() -> dict:
    import importlib.util

    import torch

    env = {"cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "tf32_defaults": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
           "pytest_timeout": importlib.util.find_spec("pytest_timeout") is not None,
           "TAPDIFF_KERNELS": os.environ.get("TAPDIFF_KERNELS", "(unset: auto)")}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", memory_gib=round(p.total_memory / 2 ** 30, 1))
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = None
    return env


def render(report: dict, head: str) -> str:
    from gpu_timing import render as render_timing

    from engine.evaluation.render import table

    n = report["counts"]
    lines = ["# GPU kit", "", head, f"**{report['summary']}** in {report['wall_s']:.0f} s (budget "
             f"{report['budget_s']:g} s); exit status {report['exit_status']}", "",
             "Environment: " + "; ".join(f"{k} {v}" for k, v in report["environment"].items()), "",
             f"## Tests ({n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped)", "",
             "Each module in its own process: `python -m pytest -p gpu_kit -p no:cacheprovider -m gpu MODULE`. "
             "Detail: what was compared, the errors and the tolerance with its reason (tests/tolerances.py).", ""]
    rows = []
    for t in report["tests"]:
        detail = t["message"] or t["properties"].get("detail", "")
        if t["outcome"] == "failed" and t["properties"].get("detail"):
            detail += " -- " + t["properties"]["detail"]
        rows.append([t["outcome"], t["test"], f"{t['seconds']:.1f}", detail])
    lines += table(["outcome", "test", "s", "detail, skip reason or failure"], rows, "llrl")
    bad = [m for m in report["modules"] if m["status"] != "ok"]
    if bad:
        lines += ["", "## Test processes that did not end normally", ""]
        lines += [f"- {m['module']}: {m['problem']}" for m in bad]
    failed = [t for t in report["tests"] if t["outcome"] == "failed" and t["text"]]
    if failed:
        lines += ["", "## Failures", ""]
        for t in failed:
            lines += [f"### {t['test']}", "", "```text", t["text"], "```", ""]
    timing = report["timing"]
    lines += [""]
    if "error" in timing:
        lines += ["## Timing", "", f"FAILED: the timing process {timing['error']}", "", "```text",
                  *timing.get("stderr_tail", []), "```"]
    elif "skipped" in timing:
        lines += ["## Timing", "", f"Not run: {timing['skipped']}"]
    else:
        lines += [render_timing(timing)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_kit.md and gpu_kit.json")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time budget (default 480)")
    p.add_argument("--tests", nargs="+", default=["tests/gpu"], help="test folders or modules (default tests/gpu)")
    args = p.parse_args(argv)
    t0 = time.time()
    deadline = t0 + args.budget_s
    sys.path[:0] = [str(HERE), str(ROOT)]
    from report import emit, header, record  # benchmarks/report.py: the provenance every results file starts with

    head = header(__file__)
    tests, modules = run_tests(args.tests, deadline - TIMING_RESERVE_S)
    timing_budget = min(TIMING_MAX_S, deadline - time.time() - TIMING_START_S)
    timing = run_timing(timing_budget) if timing_budget >= 20 else {"skipped": f"{timing_budget:.0f} s of budget left"}
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped")}
    broken = [m for m in modules if m["status"] != "ok"]
    timing_failed = "error" in timing or bool(timing.get("errors"))
    exit_status = 1 if counts["failed"] or broken or timing_failed else 0
    summary = (f"{len(tests)} tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
               + (f"; {len(broken)} test process(es) did not end normally" if broken else "")
               + "; timing: " + ("FAILED" if timing_failed else "not run" if "skipped" in timing
                                 else "CPU smoke run" if timing["smoke"] else "done"))
    report = {"record": record(__file__), "summary": summary, "exit_status": exit_status, "budget_s": args.budget_s,
              "wall_s": round(time.time() - t0, 1), "environment": environment(), "counts": counts, "tests": tests,
              "modules": modules, "timing": timing}
    from engine.storage.atomic import atomic_write_bytes

    out = Path(args.out)
    atomic_write_bytes(out / "gpu_kit.json", json.dumps(report, indent=1, default=str).encode())
    emit(render(report, head), str(out / "gpu_kit.md"))
    print(f"{summary} -> {out / 'gpu_kit.md'}", flush=True)
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
