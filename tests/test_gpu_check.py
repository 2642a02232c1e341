"""The GPU verification kit (benchmarks/gpu_check.py) on CPU: it runs what applies here, reports the GPU checks as
skipped with the reason, writes both result files, and its checks can fail (a stale or perturbed runner, a kernel
replay that ignores new inputs, a wrong tolerance, a crashing section, an exhausted budget)."""
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from engine.errors import BackendError
from engine.diffusion.captured import CapturedSampler
from engine.diffusion.sde import karras_schedule
from engine.diffusion.solvers import SOLVERS
from engine.storage.config import SDEConfig

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


gc = _load()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("this file checks the kit's CPU behaviour")
    out = tmp_path_factory.mktemp("gpu_check")
    t0 = time.time()
    rc = gc.main(["--out", str(out), "--isolate", "no"])
    report = json.loads((out / "gpu_check.json").read_text())
    return rc, out, report, {(r["section"], r["name"]): r for r in report["checks"]}, time.time() - t0


def test_cpu_run_writes_both_files_with_provenance_summary_and_exit_status(cpu_run):
    rc, out, report, checks, seconds = cpu_run
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU verification kit") and "Command: `python benchmarks/gpu_check.py --out" in md
    assert report["record"]["command"].startswith("python benchmarks/gpu_check.py --out")
    assert report["record"]["commit"] and report["record"]["versions"]["torch"]
    n = report["counts"]
    assert report["summary"] == f"{n['pass']} passed, {n['fail']} failed, {n['skipped']} skipped" and report["summary"] in md
    assert sum(n.values()) == len(checks) and report["wall_s"] > 0
    assert rc == (1 if n["fail"] else 0)
    assert n["fail"] == 0, [r["detail"] for r in report["checks"] if r["status"] == "fail"]
    assert seconds < 120


def test_cpu_applicable_checks_pass_with_real_numbers(cpu_run):
    _, _, _, checks, _ = cpu_run
    for name in SOLVERS:
        r = checks[("captured", f"CapturedSampler vs eager sample: {name} on cpu")]
        assert r["status"] == "pass", r["detail"]
        runs = r["numbers"]["runs"]
        assert len(runs) == 2 and all(0 <= c["max_abs"] <= c["tol"] * c["scale"] for c in runs)
        assert r["numbers"]["between_runs_rel"] > 0.1 and r["numbers"]["captured"] is False
    ort = checks[("onnxruntime", "Engine(cpu, onnxruntime) vs Engine(cpu, torch), log-Mels")]
    assert ort["status"] == "pass", ort["detail"]
    assert 0 <= ort["numbers"]["compare"]["max_abs"] <= gc.ORT_TOL and "tol" in ort["detail"]
    smoke = [r for (s, n), r in checks.items() if s == "timing" and "CPU smoke" in n]
    assert len(smoke) == 2 and all(r["status"] == "pass" and r["numbers"]["eager+reference"]["median_ms"] > 0
                                   for r in smoke)


def test_gpu_checks_are_skipped_with_the_reason(cpu_run):
    _, _, _, checks, _ = cpu_run
    gpu_only = [r for (s, n), r in checks.items() if s in ("engine", "kernels")
                or (s == "onnxruntime" and "cuda" in n) or (s == "timing" and "CPU smoke" not in n)]
    assert len(gpu_only) == 1 + 7 * 3 + 1 + 1
    for r in gpu_only:
        assert r["status"] == "skipped", r
        assert "no CUDA" in r["detail"] or "SUPPORTED_DTYPES" in r["detail"], r


# ---------------------------------------------------------------------------------------------------- can fail
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


def _captured(make_runner=None, tol=gc.CAPTURED_TOL, require_capture=None, solver="dpmpp_2m_sde"):
    runs = ((0, (3, 7), (3.0, 1.5)), (1, (5, 1), (2.0, 4.0)))
    return gc.captured_vs_eager(toy_model, 10, solver, karras_schedule(4, SDEConfig(0.005, 40.0)), runs, "cpu",
                                tol=tol, shape=(1, 6, 5), make_runner=make_runner, require_capture=require_capture)


def test_captured_check_passes_an_honest_runner_and_fails_stale_perturbed_or_vacuous_ones():
    for solver in sorted(SOLVERS):
        status, detail, numbers = _captured(solver=solver)
        assert status == "pass" and numbers["runs"][0]["bitwise_equal"], (solver, detail)
    status, detail, numbers = _captured(StaleRunner)
    assert status == "fail" and numbers["runs"][0]["ok"] and not numbers["runs"][1]["ok"] and "run 2" in detail
    status, detail, _ = _captured(PerturbedRunner)
    assert status == "fail" and "run 1" in detail
    status, detail, _ = _captured(StaleRunner, tol=10.0)  # a tolerance too loose to tell the runs apart
    assert status == "fail" and "stale replay would pass" in detail
    status, detail, _ = _captured(require_capture=True)  # CUDA there but nothing captured
    assert status == "fail" and "captured 0 graphs" in detail


def eager_capture(fn):
    """A stand-in for CUDA-graph capture on CPU: the static outputs are refilled by rerunning fn."""
    out = fn()
    return (lambda: [o.copy_(n) for o, n in zip(out, fn())]), out


def stale_capture(fn):
    return (lambda: None), fn()


def test_kernel_check_logic_with_an_eager_stand_in_for_the_graph():
    cases = gc.kernel_cases()
    assert {c.kernel for c in cases} == {"tap_pair_norm", "tap_rms_norm", "tap_attention", "silu_affine_adjoint"}
    for case in cases:  # on CPU the dispatchers run the references: within every tolerance
        status, detail, numbers = gc.kernel_check(case, torch.float32, "cpu", capture=eager_capture,
                                                  require_triton=False)
        assert status == "pass", (case.label, detail)
        assert all(m > 0.05 for m in numbers["replay_moved_rel"]), case.label
    case = cases[0]
    status, detail, _ = gc.kernel_check(case, torch.float32, "cpu", capture=stale_capture, require_triton=False)
    assert status == "fail" and "did not follow the new inputs" in detail
    off = lambda *a: tuple(o * (1 + 1e-3) for o in case.fast(*a))  # noqa: E731
    status, detail, _ = gc.kernel_check(case, torch.float32, "cpu", capture=eager_capture, require_triton=False, fast=off)
    assert status == "fail" and "eager output 0" in detail
    status, detail, _ = gc.kernel_check(case, torch.float32, "cpu", capture=eager_capture)
    assert status == "fail" and "dispatch chose 'torch'" in detail


def test_log_rms_near_zero_is_judged_against_a_unit_scale():
    f, g = torch.randn(2, 32, 8, 8).double(), torch.randn(2, 32, 8, 8).double()  # RMS ~ 1: log-RMS ~ 0
    from kernels import tap_pair_norm_reference

    refs = tap_pair_norm_reference(f, g)
    (tol_out, scale_out, _), (tol_log, scale_log, why) = gc._pair_norm_tols((f, g), refs, torch.float32)
    assert scale_out is None and scale_log == 1.0 and float(refs[1].abs().max()) < 0.2 and "not against" in why
    # an fp32-rounded log-RMS is well within it, and would fail a 1e-5 tolerance relative to itself
    near_zero = torch.tensor([1e-4], dtype=torch.float64)
    assert gc.compare(near_zero + 5e-8, near_zero, tol_log, scale_log)["ok"]
    assert not gc.compare(near_zero + 5e-8, near_zero, 1e-5)["ok"]


def test_onnxruntime_refusal_must_name_the_cuda_provider():
    assert gc.judge_ort_refusal(BackendError("onnxruntime has no CUDAExecutionProvider here"))[0] == "pass"
    assert gc.judge_ort_refusal(ImportError("pip install onnxruntime-gpu"))[0] == "pass"
    assert gc.judge_ort_refusal(BackendError("something else went wrong"))[0] == "fail"
    assert gc.judge_ort_refusal(RuntimeError("Expected all tensors to be on the same device, CUDAExecutionProvider"))[0] == "fail"


def test_kernel_and_capture_switches_force_the_reference_and_eager_sampling():
    import engine.api as api
    from kernels import backend_for

    fake_cuda = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    expected = "triton" if importlib.util.find_spec("triton") else "torch"
    assert backend_for(fake_cuda, "tap_attention") == expected
    with gc.kernels_enabled(False):
        assert backend_for(fake_cuda, "tap_attention") == "torch"
    assert backend_for(fake_cuda, "tap_attention") == expected
    original = api.can_capture
    with gc.engine_capture(False):
        assert api.can_capture("cuda") is False
    assert api.can_capture is original


def test_timing_lines_run_on_cpu_with_the_captured_modes_skipped():
    kit = gc.Kit(None, None, time.time() + 120, 120)
    status, detail, numbers = gc._score_line(kit, "tapdiff", 1, repeats=2)
    assert status == "pass" and numbers["modes"]["eager+kernels"]["median_ms"] > 0, detail
    assert "CUDA graphs need CUDA" in numbers["modes"]["captured+kernels"]["skipped"]
    status, detail, numbers = gc._e2e_line(kit, "two-model", 2, 2, repeats=1, steps=2)
    assert status == "pass", detail
    for mode in ("eager+kernels", "eager+reference"):
        r = numbers["modes"][mode]
        assert r["clips"] == 2 and r["sampling_s"] > 0 and r["vocoder_s"] > 0 and "2 steps" in r["sampler"]
    assert "skipped" in numbers["modes"]["captured+reference"]
    assert "CUDA graphs need CUDA" in numbers["modes"]["captured+kernels, one runner reused (sampling only)"]["skipped"]
    r = gc.time_reused_runner(kit.engine("cpu", "torch", "two-model"), 4, 2, repeats=1, steps=2)  # eager on CPU
    assert r["sampling_s"] > 0 and r["graphs"] == 0


# ------------------------------------------------------------------------------------ isolation and budget
def test_a_raising_check_fails_alone_and_sets_the_exit_status(tmp_path, monkeypatch):
    def section(kit):
        kit.check("timing", "raises", lambda: 1 / 0)
        kit.check("timing", "still runs", lambda: ("pass", "fine", {"x": float("nan")}))

    monkeypatch.setitem(gc.SECTION_FUNCS, "timing", section)
    rc = gc.main(["--out", str(tmp_path), "--sections", "timing", "--isolate", "no"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and report["summary"] == "1 passed, 1 failed, 0 skipped"
    failed = report["checks"][0]
    assert failed["detail"] == "ZeroDivisionError: division by zero" and failed["numbers"]["traceback"]
    assert report["checks"][1]["numbers"] == {"x": "nan"}  # JSON-safe
    assert "## Failures" in (tmp_path / "gpu_check.md").read_text()


def test_an_exhausted_budget_skips_with_the_reason_and_records_the_cut(tmp_path):
    rc = gc.main(["--out", str(tmp_path), "--sections", "engine,timing", "--budget-s", "0", "--isolate", "no"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["counts"]["skipped"] == len(report["checks"]) > 0
    assert all("budget" in r["detail"] for r in report["checks"]) and report["cut"]
    assert "Cut for time" in (tmp_path / "gpu_check.md").read_text()


def test_sections_in_their_own_processes_and_a_dying_one_is_a_failure(tmp_path):
    rc = gc.main(["--out", str(tmp_path), "--sections", "kernels", "--isolate", "yes"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["isolated"] and len(report["checks"]) == 7 * 3
    assert all(r["status"] == "skipped" for r in report["checks"])
    crash = tmp_path / "crash.py"  # saves one check's result, then dies
    crash.write_text("import json, sys\n"
                     "r = {'section': 'engine', 'name': 'first', 'status': 'pass', 'detail': 'ok', 'numbers': {}}\n"
                     "open(sys.argv[sys.argv.index('--child-json') + 1], 'w').write(json.dumps({'results': [r]}))\n"
                     "print('dying', file=sys.stderr)\nsys.exit(3)\n")
    results, cut = gc.run_isolated("engine", ["--out", str(tmp_path)], time.time() + 60, script=crash)
    assert [r.status for r in results] == ["pass", "fail"] and "status 3 after 1 check(s)" in results[1].detail
    assert "dying" in results[1].detail and cut == []


# ------------------------------------------------------------------- the kit's tolerances on the real kernels
INTERPRETED = """
import json, sys, torch
sys.path.insert(0, "benchmarks")
import gpu_check as gc
from kernels import SUPPORTED_DTYPES
from kernels.attention_triton import tap_attention_triton
from kernels.silu_adjoint_triton import silu_affine_adjoint_triton
from kernels.tap_norm_triton import tap_pair_norm_triton, tap_rms_norm_triton
fast = {"tap_pair_norm": tap_pair_norm_triton, "tap_rms_norm": tap_rms_norm_triton,
        "tap_attention": tap_attention_triton, "silu_affine_adjoint": silu_affine_adjoint_triton}
def capture(fn):
    out = fn()
    return (lambda: [o.copy_(n) for o, n in zip(out, fn())]), out
res = {}
for case in gc.kernel_cases():
    if "two launches" in case.label or "N 360" in case.label:
        continue  # minutes in the interpreter; tests/test_kernels.py covers them
    for dt in gc.DTYPES:
        if dt in SUPPORTED_DTYPES[case.kernel]:
            status, detail, _ = gc.kernel_check(case, dt, "cpu", capture=capture, require_triton=False,
                                                fast=fast[case.kernel])
            res[f"{case.kernel} {case.label} {dt}"] = [status, detail]
print(json.dumps(res))
"""


def test_the_kits_kernel_tolerances_pass_the_triton_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res) == 3 + 3 + 2 + 3 + 3
    assert all(status == "pass" for status, _ in res.values()), res
