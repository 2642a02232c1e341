"""Triton kernels against their PyTorch references, run by Triton's interpreter on CPU tensors.

TRITON_INTERPRET=1 must be set before any kernel is defined, so the comparisons run in a fresh process.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from kernels import backend_for, tap_pair_norm, tap_pair_norm_reference

pytest.importorskip("triton")

SCRIPT = r"""
import json, torch
from kernels.tap_norm_triton import tap_pair_norm_triton
from kernels.tap_norm import tap_pair_norm_reference
torch.manual_seed(0)
results = []
for B, Cf, Cg, H, W, dtype in [(1, 32, 32, 80, 72, "float32"), (3, 5, 7, 10, 9, "float32"), (2, 1, 1, 1, 1, "float32"),
                                (1, 3, 2, 17, 13, "float16")]:
    dt = getattr(torch, dtype)
    f = (torch.randn(B, Cf, H, W) * 3).to(dt)
    g = (torch.randn(B, Cg, H, W) * 1e-4).to(dt)
    out, scale = tap_pair_norm_triton(f, g)
    ref, ref_scale = tap_pair_norm_reference(f.float(), g.float())
    results.append({"shape": [B, Cf, Cg, H, W], "dtype": dtype, "out_shape": list(out.shape), "out_dtype": str(out.dtype),
                    "rel_err": float((out.float() - ref).abs().max() / ref.abs().max()),
                    "scale_err": float((scale.float() - ref_scale).abs().max())})
f = torch.randn(2, 4, 5, 5); f[1, 0, 0, 0] = float("nan")
out, scale = tap_pair_norm_triton(f, torch.randn(2, 4, 5, 5))
results.append({"nan_sample_all_nan": bool(out[1, :4].isnan().all()), "clean_sample_finite": bool(out[0].isfinite().all()),
                "nan_scale": bool(scale[1, 0].isnan())})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fused_tap_pair_norm_matches_reference_on_awkward_shapes(interpreted):
    for r in interpreted[:-1]:
        assert r["out_shape"] == [r["shape"][0], r["shape"][1] + r["shape"][2], *r["shape"][3:]]
        tol = 1e-5 if r["dtype"] == "float32" else 2e-3
        assert r["out_dtype"] == f"torch.{r['dtype']}"
        assert r["rel_err"] <= tol and r["scale_err"] <= tol * 10, r


def test_fused_kernel_propagates_nan_to_its_own_sample_only(interpreted):
    assert interpreted[-1] == {"nan_sample_all_nan": True, "clean_sample_finite": True, "nan_scale": True}


def test_dispatch_names_its_backend_and_uses_the_reference_on_cpu():
    f, g = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    assert backend_for(f) == "torch"
    out, s = tap_pair_norm(f, g)
    ref, rs = tap_pair_norm_reference(f, g)
    assert torch.equal(out, ref) and torch.equal(s, rs)
    assert torch.allclose(out[:, :3].pow(2).mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
