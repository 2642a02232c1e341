"""The fused kernels on a real GPU: Triton against the reference, and replayed inside a CUDA graph.
Collected only where CUDA is available (tests/conftest.py); never run on this project's CPU machines."""
import pytest
import torch

from kernels import (backend_for, silu_affine_adjoint, silu_affine_adjoint_reference, tap_attention,
                     tap_attention_reference, tap_pair_norm, tap_pair_norm_reference, tap_rms_norm,
                     tap_rms_norm_reference)
from test_kernels import TOL, _attention_inputs, _rel_err


# --------------------------------------------------------------------------------------------------------------
# On a CUDA GPU only: tests/conftest.py collects this folder only where CUDA is available.
# --------------------------------------------------------------------------------------------------------------
def _gpu_calls(dtype):
    """Each dispatcher at ScoreSubnet's / the classifier's real shapes, with its reference, on CUDA."""
    dev = "cuda"
    f, g = torch.randn(2, 32, 80, 72, device=dev, dtype=dtype), torch.randn(2, 32, 80, 72, device=dev, dtype=dtype)
    f3, g3 = torch.randn(2, 192, 10, 9, device=dev, dtype=dtype), torch.randn(2, 192, 10, 9, device=dev, dtype=dtype)
    ig = torch.randn(2, 1, 80, 72, device=dev, dtype=dtype)
    q, k, v, pos = _attention_inputs(2, 96, 10, 9, str(dtype).split(".")[1], device=dev)
    x, t = torch.randn(2, 2, 96, 20, 18, device=dev, dtype=dtype), torch.randn(2, 96, 20, 18, device=dev, dtype=dtype)
    w, sc = torch.randn(96, device=dev, dtype=dtype), torch.randn(2, 192, 1, 1, device=dev, dtype=dtype).chunk(2, 1)[0]
    F = lambda *ts: [a.float() for a in ts]
    return {
        "tap_pair_norm two launches": (lambda: tap_pair_norm(f, g), lambda: tap_pair_norm_reference(*F(f, g))),
        "tap_pair_norm one launch": (lambda: tap_pair_norm(f3, g3), lambda: tap_pair_norm_reference(*F(f3, g3))),
        "tap_rms_norm": (lambda: tap_rms_norm(ig), lambda: tap_rms_norm_reference(*F(ig))),
        "tap_attention": (lambda: tap_attention(q, k, v, pos, 4), lambda: tap_attention_reference(*F(q, k, v, pos), 4)),
        "silu_affine_adjoint": (lambda: silu_affine_adjoint(x, t, w, sc, x),
                                lambda: silu_affine_adjoint_reference(*F(x, t, w, sc, x))),
    }


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_on_gpu_dispatchers_use_triton_match_the_reference_and_replay_in_a_cuda_graph(dtype):
    for name, (fast, ref) in _gpu_calls(dtype).items():
        assert backend_for(torch.empty(0, device="cuda", dtype=dtype), name.split()[0]) == "triton"
        eager = _as_tuple(fast())
        for a, b in zip(eager, _as_tuple(ref())):
            assert a.dtype == dtype and _rel_err(a, b) <= TOL[str(dtype).split(".")[1]], name
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = _as_tuple(fast())
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(captured, eager)), name
