"""pytest-benchmark: the fused tap-pair normalisation against its PyTorch reference, side by side, with the
achieved memory bandwidth (GPU only: on CPU the Triton path does not run outside the interpreter).

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only
"""
import pytest
import torch

from kernels.tap_norm import tap_pair_norm_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("batch", [1, 16])
def test_tap_pair_norm_bandwidth(benchmark, impl, batch):
    from kernels.tap_norm_triton import tap_pair_norm_triton

    f = torch.randn(batch, 32, 80, 72, device="cuda")
    g = torch.randn(batch, 32, 80, 72, device="cuda")
    fn = tap_pair_norm_triton if impl == "triton" else tap_pair_norm_reference

    def run():
        out = fn(f, g)
        torch.cuda.synchronize()
        return out

    benchmark(run)
    # Minimum traffic: read both taps twice (sum, scale) and write the concatenated output once.
    moved = (2 * (f.numel() + g.numel()) + (f.numel() + g.numel())) * f.element_size()
    benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9
