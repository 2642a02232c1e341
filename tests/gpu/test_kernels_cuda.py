"""The fused kernels on a real GPU: each public dispatcher must choose Triton and match the reference (evaluated in
float64) at the engine's shapes, in every dtype ``kernels.dispatch.SUPPORTED_DTYPES`` sends to Triton; then the
call is captured in a CUDA graph and replayed on NEW inputs copied into its static input buffers (a graph that
kept its first result fails). The same formulas judge the Triton kernels under the interpreter on CPU
(tests/test_kernels.py, tests/test_gpu_kit.py). Tolerances, each with its reasoning: tests/tolerances.py."""
import pytest
import torch

from gpu_checks import DTYPES, kernel_cases, kernel_check, tf32, timeout_marks
from kernels import SUPPORTED_DTYPES, backend_for, using_kernels

pytestmark = [pytest.mark.gpu, *timeout_marks(120)]


def _params():
    out = []
    for case in kernel_cases():
        for dt in DTYPES:
            name = str(dt).removeprefix("torch.")
            marks = [] if dt in SUPPORTED_DTYPES[case.kernel] else [pytest.mark.skip(
                reason=f"kernels.dispatch.SUPPORTED_DTYPES sends {name} {case.kernel} to the reference")]
            out.append(pytest.param(case, dt, marks=marks, id=f"{case.id} {name}"))
    return out


@pytest.mark.parametrize("case, dtype", _params())
def test_kernel_uses_triton_matches_the_float64_reference_and_replays_on_new_inputs(case, dtype, no_tf32,
                                                                                   record_property):
    with using_kernels("auto"):  # whatever TAPDIFF_KERNELS says outside: this test is about the kernels
        check = kernel_check(case, dtype, "cuda")
    record_property("detail", check.detail)
    assert check.ok, check.detail


def test_the_kernel_switch_sends_cuda_dispatch_to_the_reference(engines, record_property):
    """``using_kernels("reference")`` (the switch the timing compares with) really takes the references on CUDA;
    how far one guided score evaluation moves between the two is reported, not judged."""
    from engine.evaluation.cost import example_inputs
    from engine.diffusion.guidance import conditioned

    x = torch.zeros(1, device="cuda")
    with using_kernels("auto"):
        assert {backend_for(x, k) for k in SUPPORTED_DTYPES} == {"triton"}
    with using_kernels("reference"):
        assert {backend_for(x, k) for k in SUPPORTED_DTYPES} == {"torch"}
    eng = engines("cuda", capture=False)
    x, sigma, oh, gamma = (t.cuda() for t in example_inputs(eng.bundle, 16, 3.0))
    fn = conditioned(eng.torch_denoiser, oh, gamma)
    with tf32(False), torch.no_grad():
        with using_kernels("auto"):
            fast = fn(x, sigma)
        with using_kernels("reference"):
            ref = fn(x, sigma)
    moved = float((fast - ref).abs().max() / ref.abs().max())
    record_property("detail", f"guided score evaluation, batch 16: Triton vs references differ by {moved:.3g} "
                              "relative to max |reference| (reported, not judged)")
    assert moved == moved, moved  # only a NaN fails
