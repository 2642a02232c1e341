"""The GPU kit on CPU: the checks of tests/gpu (tests/gpu_checks.py, at the tolerances of tests/tolerances.py) run
here wherever they can and can fail (a stale or perturbed runner, a kernel replay that ignores new inputs, a
kernel off by more than its arithmetic, a refusal that does not name the CUDA provider); the kernel tolerances
pass the real Triton kernels under the interpreter; the timing's CPU smoke run; and ``benchmarks/gpu_kit.py``
end to end, which reports every GPU test as skipped with the reason, and a failing, dying or hanging test module
as such."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gpu_checks as checks
from engine.diffusion.captured import CapturedSampler
from engine.diffusion.sde import karras_schedule
from engine.diffusion.solvers import SOLVERS, SamplerSpec
from engine.errors import BackendError
from engine.storage.config import SDEConfig
from tolerances import CAPTURED_TOL, ORT_TOL, kernel_tolerances, rel_error

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


gpu_timing = _load("gpu_timing")
gpu_kit = _load("gpu_kit")


@pytest.fixture(scope="module")
def engine():
    from engine import Engine

    return Engine(backend="torch")


# ------------------------------------------------------------------------------------ captured vs eager
def toy_model(x, sigma, onehot, gamma):
    """A guided denoiser whose output depends on x, sigma, the label and gamma (Gaussian data, S0 = 0.7)."""
    s = sigma.reshape(-1, 1, 1, 1)
    label = (onehot * torch.arange(onehot.shape[1], dtype=x.dtype)).sum(1)
    return x * (0.49 / (0.49 + s ** 2)) + 0.05 * (gamma * label).reshape(-1, 1, 1, 1)


class StaleRunner(CapturedSampler):
    """A replay that ignores new inputs: every run returns the first run's result."""

    def run(self, *a, **k):
        if not hasattr(self, "first"):
            self.first = super().run(*a, **k)
        return self.first.clone()


class PerturbedRunner(CapturedSampler):
    def run(self, *a, **k):
        return super().run(*a, **k) * (1 + 1e-3)


def _captured(make_runner=None, tol=CAPTURED_TOL, require_capture=None, solver="dpmpp_2m_sde"):
    runs = ((0, (3, 7), (3.0, 1.5)), (1, (5, 1), (2.0, 4.0)))
    return checks.captured_vs_eager(toy_model, 10, solver, karras_schedule(4, SDEConfig(0.005, 40.0)), runs, "cpu",
                                tol=tol, shape=(1, 6, 5), make_runner=make_runner, require_capture=require_capture)


def test_captured_check_passes_an_honest_runner_and_fails_stale_perturbed_or_vacuous_ones():
    for solver in sorted(SOLVERS):
        check = _captured(solver=solver)
        assert check.ok and check.numbers["runs"][0]["bitwise_equal"], (solver, check.detail)
    check = _captured(StaleRunner)
    assert not check.ok and check.numbers["runs"][0]["ok"] and not check.numbers["runs"][1]["ok"]
    assert "run 2" in check.detail
    check = _captured(PerturbedRunner)
    assert not check.ok and "run 1" in check.detail
    check = _captured(StaleRunner, tol=10.0)  # a tolerance too loose to tell the runs apart
    assert not check.ok and "stale replay would pass" in check.detail
    check = _captured(require_capture=True)  # a GPU there but nothing captured
    assert not check.ok and "captured 0 graphs" in check.detail


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_captured_check_with_the_shipped_model_on_cpu(engine, solver):
    """What tests/gpu/test_captured_cuda.py checks on a GPU, with the runner stepping eagerly over its buffers."""
    spec, feats = SamplerSpec(solver, 3), engine.bundle.features
    runs = tuple((seed, labels[:2], gammas[:2]) for seed, labels, gammas in checks.CAPTURED_RUNS)
    check = checks.captured_vs_eager(engine.torch_denoiser, engine.torch_denoiser.n_classes, solver,
                                 spec.schedule(engine.bundle.sde), runs, "cpu", shape=(1, feats.n_mels, feats.frames),
                                 options=dict(spec.options))
    assert check.ok, check.detail
    assert not check.numbers["captured"] and check.numbers["between_runs_rel"] > 0.1
    assert all(0 <= c["max_abs"] <= c["tol"] * c["scale"] for c in check.numbers["runs"])


# -------------------------------------------------------------------------------------------- kernels
def stale_capture(fn):
    return (lambda: None), fn()


def test_kernel_check_logic_with_an_eager_stand_in_for_the_graph():
    from kernels import SUPPORTED_DTYPES

    cases = checks.kernel_cases()
    assert {c.kernel for c in cases} == set(SUPPORTED_DTYPES)  # every kernel, each with its tolerance formula
    for case in cases:  # on CPU the dispatchers run the references: within every tolerance
        check = checks.kernel_check(case, torch.float32, "cpu", capture=checks.eager_capture, require_triton=False)
        assert check.ok, (case.label, check.detail)
        assert all(m > 0.05 for m in check.numbers["replay_moved_rel"]), case.label
    case = cases[0]
    check = checks.kernel_check(case, torch.float32, "cpu", capture=stale_capture, require_triton=False)
    assert not check.ok and "did not follow the new inputs" in check.detail
    off = lambda *a: tuple(o * (1 + 1e-3) for o in case.fast(*a))  # noqa: E731
    check = checks.kernel_check(case, torch.float32, "cpu", capture=checks.eager_capture, require_triton=False,
                                fast=off)
    assert not check.ok and "eager output 0" in check.detail
    check = checks.kernel_check(case, torch.float32, "cpu", capture=checks.eager_capture)
    assert not check.ok and "dispatch chose 'torch'" in check.detail


def test_log_rms_near_zero_is_judged_against_a_unit_scale():
    from kernels import tap_pair_norm_reference

    f, g = torch.randn(2, 32, 8, 8).double(), torch.randn(2, 32, 8, 8).double()  # RMS ~ 1: log-RMS ~ 0
    refs = tap_pair_norm_reference(f, g)
    out, log = kernel_tolerances("tap_pair_norm", (f, g), refs, torch.float32)
    assert out.scale is None and log.scale == 1.0 and float(refs[1].abs().max()) < 0.2 and "not against" in log.why
    # an fp32-rounded log-RMS is well within it, and would fail a 1e-5 tolerance relative to itself
    near_zero = torch.tensor([1e-4], dtype=torch.float64)
    assert rel_error(near_zero + 5e-8, near_zero, log.scale) <= log.tol
    assert not rel_error(near_zero + 5e-8, near_zero) <= 1e-5


INTERPRETED = """
import json, sys, torch
sys.path.insert(0, "tests")
import gpu_checks as checks
from kernels import SUPPORTED_DTYPES
from kernels.attention_triton import tap_attention_triton
from kernels.silu_adjoint_triton import silu_affine_adjoint_triton
from kernels.tap_norm_triton import tap_pair_norm_triton, tap_rms_norm_triton
fast = {"tap_pair_norm": tap_pair_norm_triton, "tap_rms_norm": tap_rms_norm_triton,
        "tap_attention": tap_attention_triton, "silu_affine_adjoint": silu_affine_adjoint_triton}
res = {}
for case in checks.kernel_cases():
    if "two launches" in case.label or "N 360" in case.label:
        continue  # minutes in the interpreter; tests/test_kernels.py covers both plans and N = 360
    for dt in checks.DTYPES:
        if dt in SUPPORTED_DTYPES[case.kernel]:
            c = checks.kernel_check(case, dt, "cpu", capture=checks.eager_capture, require_triton=False,
                                    fast=fast[case.kernel])
            res[f"{case.id} {dt}"] = [c.ok, c.detail]
print(json.dumps(res))
"""


@pytest.mark.slow
def test_the_gpu_kernel_checks_pass_the_triton_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res) == 3 + 3 + 2 + 3 + 3
    assert all(ok for ok, _ in res.values()), res


# -------------------------------------------------------------------------------------- onnxruntime, Engine
def test_onnxruntime_refusal_must_name_the_cuda_provider():
    assert checks.judge_ort_refusal(BackendError("onnxruntime has no CUDAExecutionProvider here")).ok
    assert checks.judge_ort_refusal(ImportError("pip install onnxruntime-gpu")).ok
    assert not checks.judge_ort_refusal(BackendError("something else went wrong")).ok
    assert not checks.judge_ort_refusal(RuntimeError("tensors on different devices, CUDAExecutionProvider")).ok


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnxruntime_cpu_matches_torch_within_the_kits_tolerance(engine):
    from engine import Engine

    a = Engine(backend="onnxruntime").generate(list(checks.DIGITS), n=1, seed=0, steps=3)
    b = engine.generate(list(checks.DIGITS), n=1, seed=0, steps=3)
    c = checks.compare(a.mels, b.mels, ORT_TOL, scale=1.0)
    assert c["ok"] and c["max_abs"] > 0, checks.fmt(c)


def test_the_engines_capture_switch_is_what_the_timing_turns(monkeypatch):
    """Where capture is possible (patched in: there is no GPU here), Engine(capture=False) keeps the eager loop."""
    import engine.api as api
    from engine import Engine

    monkeypatch.setattr(api, "can_capture", lambda device: True)
    assert Engine(backend="torch").static_runners is True
    assert Engine(backend="torch", capture=False).static_runners is False


# ----------------------------------------------------------------------------------------- timing, the kit
def test_the_timing_smoke_run_on_cpu():
    res = gpu_timing.run(budget_s=60)
    assert res["smoke"] and res["device"] == "cpu" and res["modes"] == ["eager+reference"] and not res["cut"]
    assert set(res["not_applicable"]) == {"eager+triton", "captured+triton", "captured+reference"}
    assert {(ln["what"], ln["model"], ln["batch"]) for ln in res["lines"]} == {
        (w, m, 1) for w in ("score evaluation", "clips end to end") for m in ("tapdiff", "two-model")}
    for ln in res["lines"]:
        q = ln["modes"]["eager+reference"]
        assert ln["repeats"] == 3 and len(ln["times_s"]["eager+reference"]) == 3
        assert 0 < q["median"] and q["p10"] <= q["median"] <= q["p90"] and q["peak_mib"] > 0
        assert q["dispatch"] == "torch" and ln["ratios"] == {}
        if ln["what"] == "clips end to end":
            assert ln["clips"] == 2 and "2 steps" in ln["sampler"] and ln["vocoder"]["median"] > 0
    assert res["rate_gmacs"]["before"] > 0 and res["rate_gmacs"]["after"] > 0
    md = gpu_timing.render(res)
    assert "CPU smoke run" in md and "CUDA graphs need CUDA" in md and "median [p10, p90]" in md
    assert md.count("| tapdiff | 1") == 2 and "reference matmul" in md


def test_a_timing_line_that_fails_is_reported_and_the_others_still_run(monkeypatch):
    def boom(self, model, batch, lines_left):
        raise RuntimeError(f"CUDA error: an illegal memory access ({model})")

    monkeypatch.setattr(gpu_timing.Timing, "clips_line", boom)
    res = gpu_timing.run(budget_s=60)
    assert [ln["what"] for ln in res["lines"]] == ["score evaluation"] * 2
    assert res["errors"] == [f"clips {m} batch 1: RuntimeError: CUDA error: an illegal memory access ({m})"
                             for m in ("tapdiff", "two-model")]
    assert "**FAILED**: clips tapdiff batch 1" in gpu_timing.render(res)


@pytest.mark.slow
def test_the_kit_end_to_end_on_cpu(tmp_path):
    t0 = time.time()
    out = subprocess.run([sys.executable, "benchmarks/gpu_kit.py", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert time.time() - t0 < 60
    md, report = (tmp_path / "gpu_kit.md").read_text(), json.loads((tmp_path / "gpu_kit.json").read_text())
    head = md.splitlines()
    assert head[0] == "# GPU kit" and head[2] == f"Command: `python benchmarks/gpu_kit.py --out {tmp_path}`"
    assert head[3].startswith("Commit: ") and "no GPU" in head[4] and "torch threads" in head[4]
    assert head[5].startswith("Versions: ") and "torch" in head[5]
    assert report["record"]["commit"] and report["exit_status"] == 0 and report["summary"] in md
    tests = report["tests"]
    assert len(tests) >= 30 and report["counts"] == {"passed": 0, "failed": 0, "skipped": len(tests)}
    assert {m["status"] for m in report["modules"]} == {"ok"} and len(report["modules"]) >= 4
    for t in tests:
        assert t["test"].startswith("tests/gpu/test_") and t["message"], t
        assert "no CUDA device" in t["message"] or "SUPPORTED_DTYPES" in t["message"], t
        assert f"| skipped | {t['test']} |" in md
    assert "## Timing (CPU smoke run: cpu)" in md and report["timing"]["smoke"] and report["timing"]["lines"]
    assert "CPU smoke run" in report["summary"]


FAKE_TESTS = """
import os, time
import pytest
pytestmark = pytest.mark.gpu

def test_passes(record_property):
    record_property("detail", "compared x with y: max abs 0")

def test_skips():
    pytest.skip("not on this machine")

def test_fails():
    assert 1 + 1 == 3, "arithmetic"

def test_hangs():
    if os.environ.get("KIT_TEST_HANG"):
        time.sleep(60)

def test_dies():
    os._exit(3)

def test_never_runs():
    pass
"""


@pytest.mark.slow
def test_the_kit_reports_passes_skips_failures_and_a_dying_or_hanging_process(tmp_path, monkeypatch):
    (tmp_path / "test_fake.py").write_text(FAKE_TESTS)
    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    tests, modules = gpu_kit.run_tests([str(tmp_path)], time.time() + 120)
    # a test by its name, a module that failed to collect by its file name (its node id is relative to the rootdir
    # pytest chose, which depends on where the repository is checked out)
    by = {t["test"].split("::")[-1].split("/")[-1]: t for t in tests}
    assert by["test_passes"]["outcome"] == "passed"
    assert by["test_passes"]["properties"]["detail"] == "compared x with y: max abs 0"
    assert by["test_skips"]["outcome"] == "skipped" and by["test_skips"]["message"] == "not on this machine"
    assert by["test_fails"]["outcome"] == "failed" and "arithmetic" in by["test_fails"]["message"]
    assert "assert" in by["test_fails"]["text"]
    assert by["test_dies"]["outcome"] == "failed" and "exited with status 3 while running" in by["test_dies"]["message"]
    assert "test_never_runs" not in by
    assert by["test_broken.py"]["outcome"] == "failed" and "no_such_module_here" in by["test_broken.py"]["message"]
    assert [m["status"] for m in modules] == ["failed", "failed"] and "status 2" in modules[0]["problem"]
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped")}
    report = {"summary": "s", "wall_s": 1.0, "budget_s": 9, "exit_status": 1, "environment": {}, "tests": tests,
              "modules": modules, "counts": counts, "timing": {"error": "exited with status 1"}}
    md = gpu_kit.render(report, "Command: `x`\n")
    assert "## Failures" in md and "## Test processes that did not end normally" in md
    assert "| passed | " in md and "compared x with y" in md and "FAILED: the timing process exited" in md

    monkeypatch.setenv("KIT_TEST_HANG", "1")
    monkeypatch.setattr(gpu_kit, "MIN_MODULE_S", 0.5)
    tests, modules = gpu_kit.run_tests([str(tmp_path / "test_fake.py")], time.time() + 8)
    hung = {t["test"].split("::")[-1]: t for t in tests}["test_hangs"]
    assert hung["outcome"] == "failed" and "timed out" in hung["message"] and "while running" in hung["message"]
    assert modules[0]["status"] == "failed" and modules[0]["returncode"] is None
