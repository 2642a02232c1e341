"""pytest-benchmark: each fused kernel against its PyTorch reference, side by side, with achieved memory
bandwidth (and TFLOP/s for attention). GPU only: on CPU the Triton paths do not run outside the
interpreter, so every test here skips without CUDA (``benchmarks/kernel_bench.py`` times the references on
CPU and reports compile metadata).

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only

Cases (shapes, minimum-traffic byte counts, FLOPs) come from ``kernel_bench.cases``: one definition.
"""
import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (kernel, the case's shape with {B} for the batch, implementations to compare)
CASES = [
    ("tap_pair_norm", "B={B} 2x32x80x72", ["torch", "triton 1 launch", "triton 2 launches"]),
    ("tap_pair_norm", "B={B} 2x192x10x9", ["torch", "triton 1 launch", "triton 2 launches"]),
    ("tap_rms_norm", "B={B} 1x80x72", ["torch", "triton"]),
    ("tap_attention", "B={B} C=64 N=360 dh=16", ["torch", "triton"]),
    ("tap_attention", "B={B} C=96 N=90 dh=24", ["torch", "triton"]),
    ("silu_affine_adjoint", "S=2 B={B} 48x40x36 w", ["torch", "triton"]),
    ("silu_affine_adjoint", "S=2 B={B} 48x40x36 w+scale+residual", ["torch", "triton"]),
]
PARAMS = [pytest.param(kernel, shape, impl, id=f"{kernel}[{shape.replace('B={B} ', '')}]-{impl}")
          for kernel, shape, impls in CASES for impl in impls]


def _find_case(kernel: str, shape: str, dtype: torch.dtype, batch: int):
    from kernel_bench import cases

    want = shape.format(B=batch)
    for case in cases("cuda", [dtype], [batch], with_triton=True):
        if case.kernel == kernel and case.shape == want:
            return case
    raise LookupError(f"no {kernel} case {want!r} in kernel_bench.cases")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("kernel,shape,impl", PARAMS)
def test_kernel_against_reference(benchmark, kernel, shape, impl, dtype, batch):
    case = _find_case(kernel, shape, dtype, batch)
    fn = case.impls[impl]

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    run()  # compile / warm up outside the timed rounds
    benchmark(run)
    median = benchmark.stats.stats.median
    benchmark.extra_info["shape"] = case.shape
    benchmark.extra_info["GB/s"] = case.bytes / median / 1e9
    if case.flops:
        benchmark.extra_info["TFLOP/s"] = case.flops / median / 1e12


def test_every_benchmarked_case_exists_in_kernel_bench():
    """Runs anywhere (CPU tensors, no Triton): the GPU parametrisation above names real cases."""
    from kernel_bench import cases

    shapes = {(c.kernel, c.shape, name) for c in cases("cpu", [torch.float32], [1, 16], with_triton=False)
              for name in c.impls}
    for kernel, shape, impls in CASES:
        for batch in (1, 16):
            assert (kernel, shape.format(B=batch), "torch") in shapes, (kernel, shape, batch)
