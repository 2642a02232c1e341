"""onnxruntime on the GPU machine: ``Engine(device="cuda", backend="onnxruntime")`` works and samples what eager
torch on CUDA samples, or refuses by naming the missing CUDA provider (the GPU machines have the CPU onnxruntime
only); and the CPU provider against eager torch there. The refusal judge is tested on CPU
(tests/test_gpu_kit.py). Tolerance: tests/tolerances.py (ORT_TOL)."""
import importlib.util

import pytest

from gpu_checks import DIGITS, compare, fmt, judge_ort_refusal, tf32, timeout_marks
from tolerances import ORT_TOL, ORT_WHY

pytestmark = [pytest.mark.gpu, *timeout_marks(240),
              pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"),
              pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed (the export)")]


def test_onnxruntime_on_cuda_works_or_refuses_by_name(engines, record_property):
    from engine import Engine

    try:
        eng = Engine(model="tapdiff", device="cuda", backend="onnxruntime")
        with tf32(False):
            a = eng.generate(list(DIGITS), n=1, seed=0)
    except Exception as e:  # noqa: BLE001  (judged: a refusal must name the CUDA provider)
        check = judge_ort_refusal(e)
        record_property("detail", check.detail)
        assert check.ok, check.detail
        return
    with tf32(False):
        b = engines("cuda").generate(list(DIGITS), n=1, seed=0)
    c = compare(a.mels, b.mels, ORT_TOL, scale=1.0)
    providers = eng.denoiser.providers() if hasattr(eng.denoiser, "providers") else None
    detail = f"works (providers {providers}): {len(DIGITS)} clips vs Engine(cuda, torch): {fmt(c)} [{ORT_WHY}]"
    record_property("detail", detail)
    assert c["ok"], detail


def test_onnxruntime_cpu_provider_matches_torch_on_this_machine(engines, record_property):
    ort, eager = engines("cpu", "onnxruntime"), engines("cpu")
    a = ort.generate(list(DIGITS), n=1, seed=0, steps=6)
    b = eager.generate(list(DIGITS), n=1, seed=0, steps=6)
    c = compare(a.mels, b.mels, ORT_TOL, scale=1.0)
    detail = f"{len(DIGITS)} clips, {eager.sampler_spec(steps=6).label()}: {fmt(c)} [{ORT_WHY}]"
    record_property("detail", detail)
    assert c["ok"], detail
