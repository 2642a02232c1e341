"""The fused kernels against their PyTorch references, the references against independent computations,
the dispatch rules, and a real compile of every Triton kernel for sm_90 / sm_80.

No GPU is needed or used. The Triton kernels run under Triton's interpreter on CPU tensors, against their
references evaluated in float64, at the tolerances the GPU tests use (``tests/tolerances.py``, one formula per
kernel with its reasoning). TRITON_INTERPRET=1 must be set before any kernel is defined, so ``interpreted``
re-runs this file as a script (``python tests/test_kernels.py --interpret``) in a fresh process and reads back
one JSON dict of errors, tolerances and flags per case. ``compiled`` runs ``python -m kernels.aot`` (no
interpreter) in a fresh process with an empty Triton cache, so every kernel really goes through TTIR -> TTGIR -> PTX -> cubin.
"""
import ast
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from kernels import (
    backend_for,
    needs_grad,
    silu_affine_adjoint,
    silu_affine_adjoint_reference,
    silu_derivative,
    tap_attention,
    tap_attention_reference,
    tap_pair_norm,
    tap_pair_norm_reference,
    tap_rms_norm,
    tap_rms_norm_reference,
)

from tolerances import adjoint_tolerance, attention_tolerance, kernel_tolerances, rel_error

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------
# Interpreter cases (run in the subprocess). Each returns plain numbers/flags; the tests below judge them.
# --------------------------------------------------------------------------------------------------------------
def _norm_cases() -> dict:
    from kernels.tap_norm_triton import tap_pair_norm_triton, tap_rms_norm_triton

    res = {}
    # (B, Cf, Cg, H, W, dtype, plan kwargs): the real full-resolution tap; odd sizes with small blocks so both
    # plans loop/chunk with masked tails (n_f = 315, n_g = 441 over blocks of 128); n = 1; fp16; bf16.
    for B, Cf, Cg, H, W, dt, kw in [
        (1, 32, 32, 80, 72, "float32", {}),
        (3, 5, 7, 9, 7, "float32", {"single_launch": True, "block": 128}),
        (3, 5, 7, 9, 7, "float32", {"single_launch": False, "block": 128}),
        (2, 1, 1, 1, 1, "float32", {"single_launch": True}),
        (2, 1, 1, 1, 1, "float32", {"single_launch": False}),
        (1, 3, 2, 17, 13, "float16", {"single_launch": True, "block": 256}),
        (1, 3, 2, 17, 13, "float16", {"single_launch": False, "block": 256}),
        (2, 3, 4, 5, 5, "bfloat16", {}),
    ]:
        f = (torch.randn(B, Cf, H, W) * 3).to(getattr(torch, dt))
        g = (torch.randn(B, Cg, H, W) * 1e-4).to(getattr(torch, dt))
        out, s = tap_pair_norm_triton(f, g, **kw)
        ref, rs = tap_pair_norm_reference(f.double(), g.double())
        t_out, t_log = kernel_tolerances("tap_pair_norm", (f, g), (ref, rs), dt)
        res[f"pair {B}x{Cf}+{Cg}x{H}x{W} {dt} {kw}"] = {
            "dtype": dt, "out_shape": list(out.shape), "ref_shape": list(ref.shape), "out_dtype": str(out.dtype),
            "scale_shape": list(s.shape), "scale_dtype": str(s.dtype),
            "rel_err": rel_error(out, ref, t_out.scale), "tol": t_out.tol,
            "scale_err": rel_error(s, rs, t_log.scale), "scale_tol": t_log.tol}
    for B, C, H, W, dt, kw in [(2, 1, 80, 72, "float32", {}), (2, 1, 80, 72, "float32", {"single_launch": False}),
                               (1, 3, 17, 13, "float16", {"block": 128}), (3, 2, 1, 1, "float32", {})]:
        x = (torch.randn(B, C, H, W) * 1e3).to(getattr(torch, dt))
        out, s = tap_rms_norm_triton(x, **kw)
        ref, rs = tap_rms_norm_reference(x.double())
        t_out, t_log = kernel_tolerances("tap_rms_norm", (x,), (ref, rs), dt)
        res[f"single {B}x{C}x{H}x{W} {dt} {kw}"] = {
            "dtype": dt, "out_shape": list(out.shape), "ref_shape": list(ref.shape), "out_dtype": str(out.dtype),
            "scale_shape": list(s.shape), "scale_dtype": str(s.dtype),
            "rel_err": rel_error(out, ref, t_out.scale), "tol": t_out.tol,
            "scale_err": rel_error(s, rs, t_log.scale), "scale_tol": t_log.tol}

    nan = {}
    for single in (True, False):
        f, g = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
        f[1, 0, 0, 0] = float("nan")
        out, s = tap_pair_norm_triton(f, g, single_launch=single, block=32)
        nan[str(single)] = {"nan_tap_all_nan": bool(out[1, :4].isnan().all()), "other_tap_finite": bool(out[1, 4:].isfinite().all()),
                            "clean_sample_finite": bool(out[0].isfinite().all()), "nan_scale": bool(s[1, 0].isnan()),
                            "other_scales_finite": bool(s[0].isfinite().all() and s[1, 1].isfinite())}
    res["nan"] = nan
    f, g = torch.randn(2, 16, 20, 18), torch.randn(2, 16, 20, 18)
    runs = [tap_pair_norm_triton(f, g, single_launch=False, block=256) for _ in range(2)]
    res["two_launch_bitwise_repeatable"] = all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    return res


def _attention_inputs(B, C, H, W, dt, q_layout="contiguous", device="cpu"):
    dtype = getattr(torch, dt)
    kv = torch.randn(B, 2 * C, H, W).to(device, dtype)
    k, v = kv.chunk(2, dim=1)  # channel-slice views, as TapAttention makes them
    q = torch.randn(B, C, H, W).to(device, dtype)
    if q_layout == "channels_last":  # token stride C, channel stride 1
        q = q.to(memory_format=torch.channels_last)
    elif q_layout == "slice":
        q = torch.randn(B, C + 3, H, W).to(device, dtype)[:, 2:C + 2]
    pos = (0.5 * torch.randn(1, C, H, W)).to(device, dtype)
    return q, k, v, pos


def _attention_cases() -> dict:
    from kernels.attention_triton import tap_attention_triton

    res = {}
    # (B, C, heads, H, W, dtype, launch kwargs, q layout). N = 90 and 360 are ScoreSubnet's token counts; blocks of
    # 32 leave tails (90 = 2 * 32 + 26); dh = 24 (C = 96) and 6 are not powers of two; N = 15 < one block; N = 1.
    for B, C, heads, H, W, dt, kw, layout in [
        (2, 96, 4, 10, 9, "float32", {"block_m": 32, "block_n": 32}, "contiguous"),
        (2, 96, 4, 10, 9, "float16", {"block_m": 32, "block_n": 32}, "contiguous"),
        (1, 64, 4, 20, 18, "float32", {}, "contiguous"),
        (1, 64, 4, 20, 18, "float16", {}, "contiguous"),
        (3, 12, 2, 3, 5, "float32", {"block_m": 16, "block_n": 16}, "channels_last"),
        (2, 24, 3, 4, 7, "float16", {"block_m": 16, "block_n": 16}, "slice"),
        (1, 8, 1, 1, 1, "float32", {}, "contiguous"),
    ]:
        q, k, v, pos = _attention_inputs(B, C, H, W, dt, layout)
        out = tap_attention_triton(q, k, v, pos, heads, **kw)
        ref = tap_attention_reference(q.double(), k.double(), v.double(), pos.double(), heads)
        tol = attention_tolerance(q, k, v, pos, heads, dt)
        res[f"{B}x{C}x{H}x{W} heads={heads} {dt} {kw} q={layout}"] = {
            "dtype": dt, "out_shape": list(out.shape), "ref_shape": list(ref.shape), "out_dtype": str(out.dtype),
            "out_contiguous": out.is_contiguous(), "rel_err": rel_error(out, ref, tol.scale), "tol": tol.tol}

    nan = {}
    for dt in ("float32", "float16"):
        q, k, v, pos = _attention_inputs(2, 96, 10, 9, dt)
        q = q.clone()
        q[0, 24 + 5, 4, 2] = float("nan")  # batch 0, head 1, one query token
        v = v.clone()
        v[1, 3, 0, 7] = float("nan")  # batch 1, head 0, channel 3, one token: poisons that channel for all queries
        out = tap_attention_triton(q, k, v, pos, 4, block_m=32, block_n=32)
        ref = tap_attention_reference(q.double(), k.double(), v.double(), pos.double(), 4)
        tol = attention_tolerance(q, k, v, pos, 4, dt)  # over the finite inputs
        nan[dt] = {"same_nan_mask": torch.equal(out.isnan(), ref.isnan()), "n_nan": int(out.isnan().sum()),
                   "rel_err_elsewhere": rel_error(out[~ref.isnan()], ref[~ref.isnan()], tol.scale), "tol": tol.tol}
    res["nan"] = nan
    return res


def _adjoint_cases() -> dict:
    from kernels.silu_adjoint_triton import silu_affine_adjoint_triton

    res = {}
    # n = B*C*H*W = 210 over blocks of 64 leaves a tail; B = 1 at ResBlock's real (48, 40, 36) with the default
    # block; x without the S axis; scale as a strided chunk of the FiLM output, and as (1, C, 1, 1).
    for S, B, C, H, W, dt, parts, kw in [
        (1, 2, 5, 7, 3, "float32", "w", {"block": 64}),
        (2, 2, 5, 7, 3, "float32", "w+scale+res", {"block": 64}),
        (2, 2, 5, 7, 3, "float16", "w+scale+res", {"block": 64}),
        (1, 2, 5, 7, 3, "float16", "w", {"block": 64}),
        (2, 1, 48, 40, 36, "float32", "w+scale+res", {}),
        (2, 3, 4, 5, 5, "float32", "none", {"block": 32}),
        (2, 3, 4, 5, 5, "float32", "w+scale1+res", {"block": 32}),
        (0, 2, 5, 7, 3, "float32", "w+scale+res", {"block": 64}),
        (2, 2, 5, 7, 3, "bfloat16", "w+scale+res", {"block": 64}),
    ]:
        dtype = getattr(torch, dt)
        xs = (S, B, C, H, W) if S else (B, C, H, W)
        x = torch.randn(xs).to(dtype)
        t = (3 * torch.randn(B, C, H, W)).to(dtype)
        w = torch.randn(C).to(dtype) if "w" in parts else None
        scale = None
        if "scale1" in parts:
            scale = torch.randn(1, C, 1, 1).to(dtype)
        elif "scale" in parts:
            scale = torch.randn(B, 2 * C, 1, 1).to(dtype).chunk(2, dim=1)[0]  # non-contiguous, as in ResBlock
        r = torch.randn(xs).to(dtype) if "res" in parts else None
        out = silu_affine_adjoint_triton(x, t, w, scale, r, **kw)
        up = [None if a is None else a.double() for a in (x, t, w, scale, r)]
        ref = silu_affine_adjoint_reference(*up)
        tol = adjoint_tolerance(t, dt)
        res[f"S={S or 'none'} {B}x{C}x{H}x{W} {dt} {parts} {kw}"] = {
            "dtype": dt, "out_shape": list(out.shape), "ref_shape": list(ref.shape), "out_dtype": str(out.dtype),
            "rel_err": rel_error(out, ref, tol.scale), "tol": tol.tol}

    x, t, w = torch.randn(2, 2, 5, 7, 3), torch.randn(2, 5, 7, 3), torch.randn(5)
    t[0, :, 0, 0] = torch.tensor([-1e4, -100.0, 100.0, 1e4, 0.0])  # saturated sigmoid either way stays finite
    t[1, 2, 3, 1] = float("nan")  # poisons that element in both cotangents
    x[1, 0, 4, 6, 2] = float("nan")  # poisons one element of cotangent 1 only
    out = silu_affine_adjoint_triton(x, t, w, block=64)
    ref = silu_affine_adjoint_reference(x.double(), t.double(), w.double())
    tol = adjoint_tolerance(t, "float32")  # over the finite t: |t| up to 1e4 here
    res["nan"] = {"same_nan_mask": torch.equal(out.isnan(), ref.isnan()), "n_nan": int(out.isnan().sum()),
                  "rel_err_elsewhere": rel_error(out[~ref.isnan()], ref[~ref.isnan()], tol.scale), "tol": tol.tol}
    return res


# What a CUDA graph cannot capture: a host read of a tensor value (.item(), bool(t), .tolist() all dispatch
# _local_scalar_dense) and a tensor made from host data (torch.tensor(...) dispatches lift_fresh).
HOST_OPS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy")


def _host_ops_cases() -> dict:
    """Every Triton wrapper, every plan, run under a dispatch mode that records the aten ops it issues."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels.attention_triton import tap_attention_triton
    from kernels.silu_adjoint_triton import silu_affine_adjoint_triton
    from kernels.tap_norm_triton import tap_pair_norm_triton, tap_rms_norm_triton

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    q, k, v, pos = _attention_inputs(1, 8, 3, 4, "float32")
    x, sc = torch.randn(2, 1, 8, 3, 4), torch.randn(1, 16, 1, 1).chunk(2, dim=1)[0]
    calls = {"tap_attention_triton": lambda: tap_attention_triton(q, k, v, pos, 2),
             "silu_affine_adjoint_triton": lambda: silu_affine_adjoint_triton(x, q, pos[0, :, 0, 0], sc, x),
             "tap_pair_norm_triton one launch": lambda: tap_pair_norm_triton(q, v, single_launch=True),
             "tap_pair_norm_triton two launches": lambda: tap_pair_norm_triton(q, v, single_launch=False),
             "tap_rms_norm_triton": lambda: tap_rms_norm_triton(q)}
    res = {}
    for name, call in calls.items():
        with Record() as rec:
            call()
        res[name] = {"host_ops": sorted(o for o in rec.ops if o in HOST_OPS), "n_ops": len(rec.ops)}
    return res


def _interpret_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.manual_seed(0)
    print(json.dumps({"norm": _norm_cases(), "attention": _attention_cases(), "adjoint": _adjoint_cases(),
                      "host_ops": _host_ops_cases()}))


# --------------------------------------------------------------------------------------------------------------
# Fixtures: the two subprocesses.
# --------------------------------------------------------------------------------------------------------------
class _Run:
    """A subprocess writing to files (a pipe nobody reads until the end could fill and stall it)."""

    def __init__(self, folder: Path, args: list[str], **env):
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TRITON_DEFAULT_FP_FUSION": "1",
                    **env}
        self.out, self.err = folder / "stdout", folder / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, *args], env=full_env, cwd=ROOT, stdout=out, stderr=err)

    def output(self) -> str:
        try:
            self.process.wait(timeout=300)
        finally:
            self.stop()
        assert self.process.returncode == 0, self.err.read_text()[-3000:]
        return self.out.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory) -> dict:
    """The interpreter run and the compile run, started together (each keeps one core busy for several seconds)."""
    cache = tmp_path_factory.mktemp("triton_cache")  # empty: every kernel is really compiled
    runs = {"interpreted": _Run(tmp_path_factory.mktemp("interpreted"), [__file__, "--interpret"], TRITON_INTERPRET="1"),
            "compiled": _Run(tmp_path_factory.mktemp("compiled"), ["-m", "kernels.aot"], TRITON_CACHE_DIR=str(cache),
                             TRITON_INTERPRET="0")}
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="module")
def interpreted(kernel_runs) -> dict:
    return json.loads(kernel_runs["interpreted"].output().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled(kernel_runs) -> list[dict]:
    stdout = kernel_runs["compiled"].output()
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _check_cases(cases: dict, shape_keys=("out_shape", "ref_shape")) -> None:
    assert cases
    for name, r in cases.items():
        assert r[shape_keys[0]] == r[shape_keys[1]], name
        assert r["out_dtype"] == f"torch.{r['dtype']}", name
        assert r["rel_err"] <= r["tol"], (name, r)


# --------------------------------------------------------------------------------------------------------------
# Triton kernels (interpreter) against the references.
# --------------------------------------------------------------------------------------------------------------
def test_tap_norm_kernels_match_reference_on_both_launch_plans_and_awkward_shapes(interpreted):
    cases = {k: v for k, v in interpreted["norm"].items() if k.startswith(("pair", "single"))}
    assert len(cases) == 12
    _check_cases(cases)
    for name, r in cases.items():
        B = r["out_shape"][0]
        assert r["scale_shape"] == ([B, 2] if name.startswith("pair") else [B]), name
        assert r["scale_dtype"] == r["out_dtype"], name
        assert r["scale_err"] <= r["scale_tol"], (name, r)


def test_tap_norm_kernels_propagate_nan_to_their_own_sample_and_tap_only(interpreted):
    flags = {"nan_tap_all_nan": True, "other_tap_finite": True, "clean_sample_finite": True, "nan_scale": True,
             "other_scales_finite": True}
    assert interpreted["norm"]["nan"] == {"True": flags, "False": flags}


def test_two_launch_tap_norm_is_deterministic_without_atomics(interpreted):
    assert interpreted["norm"]["two_launch_bitwise_repeatable"] is True


def test_attention_kernel_matches_reference_on_masked_tails_odd_head_dims_and_strided_inputs(interpreted):
    cases = {k: v for k, v in interpreted["attention"].items() if k != "nan"}
    assert len(cases) == 7
    _check_cases(cases)
    assert all(r["out_contiguous"] for r in cases.values())


def test_attention_kernel_puts_nan_exactly_where_the_reference_does(interpreted):
    for dt, r in interpreted["attention"]["nan"].items():
        # one NaN query row (dh = 24 channels of one token) + one NaN value entry (its channel, all 90 queries)
        assert r["same_nan_mask"] and r["n_nan"] == 24 + 90, (dt, r)
        assert r["rel_err_elsewhere"] <= r["tol"], (dt, r)


def test_adjoint_kernel_matches_reference_for_every_optional_operand(interpreted):
    cases = {k: v for k, v in interpreted["adjoint"].items() if k != "nan"}
    assert len(cases) == 9
    _check_cases(cases)


def test_adjoint_kernel_keeps_nan_elementwise_and_saturated_sigmoid_finite(interpreted):
    r = interpreted["adjoint"]["nan"]
    assert r["same_nan_mask"] and r["n_nan"] == 3, r  # t's NaN in both cotangents, x's NaN in one
    assert r["rel_err_elsewhere"] <= r["tol"], r


# --------------------------------------------------------------------------------------------------------------
# Real compilation (no interpreter): every kernel, sm_90 and sm_80.
# --------------------------------------------------------------------------------------------------------------
def _jit_kernels() -> set[str]:
    """Names of all triton.jit functions launched from the package (helpers called from kernels excluded)."""
    names = set()
    for path in (ROOT / "kernels").glob("*_triton.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                    ast.unparse(d).startswith("triton.jit") for d in node.decorator_list):
                names.add(node.name)
    return names


def test_every_triton_kernel_compiles_to_ptx_and_cubin_for_sm90_and_sm80_without_spills(compiled, record_property):
    launched = _jit_kernels()
    assert launched == {"_tap_norm_one_launch_kernel", "_tap_sumsq_partials_kernel", "_tap_scale_kernel",
                        "_tap_attention_fwd_kernel", "_silu_affine_adjoint_kernel"}
    from kernels.aot import specs

    covered = {s.kernel.fn.__name__ for s in specs()}
    assert covered == launched
    assert len(compiled) == 2 * len(specs())
    for r in compiled:
        assert r["ptx_bytes"] > 0 and r["cubin_bytes"] > 0, r
        assert r["registers"] is not None and 0 < r["registers"] <= 255, r
        assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, r
        assert r["shared_bytes"] <= 48 * 1024, r  # fits without opting into large dynamic shared memory
        record_property(f"{r['arch']} {r['kernel']}", {k: r[k] for k in ("num_warps", "shared_bytes", "registers")})
    attention = [r for r in compiled if r["kernel"].startswith("tap_attention_fwd [fp16")]
    assert {r["arch"]: r["mma"] for r in attention} == {"sm_90": "wgmma", "sm_80": "mma.sync"}


# --------------------------------------------------------------------------------------------------------------
# References against independent computations; dispatch. (No Triton needed.)
# --------------------------------------------------------------------------------------------------------------
def test_attention_reference_equals_naive_softmax_attention_per_head():
    B, C, heads, H, W = 2, 96, 4, 5, 3
    kv = torch.randn(B, 2 * C, H, W, dtype=torch.float64)
    k, v = kv.chunk(2, dim=1)
    q = torch.randn(B, C, H, W, dtype=torch.float64)
    pos = torch.randn(1, C, H, W, dtype=torch.float64)
    out = tap_attention_reference(q, k, v, pos, heads)
    dh = C // heads
    for b in range(B):
        for h in range(heads):
            ch = slice(h * dh, (h + 1) * dh)
            Q = (q[b, ch] + pos[0, ch]).reshape(dh, -1).T  # (N, dh)
            K = (k[b, ch] + pos[0, ch]).reshape(dh, -1).T
            V = v[b, ch].reshape(dh, -1).T
            A = torch.softmax(Q @ K.T / dh ** 0.5, dim=-1) @ V
            assert torch.allclose(out[b, ch].reshape(dh, -1).T, A, rtol=1e-10, atol=1e-12), (b, h)


def _resblock_tail(h, w, bias, scale, shift):
    """The forward op whose VJP the adjoint computes: silu(t), t = (h * w + bias) * (1 + scale) + shift."""
    t = h
    if w is not None:
        t = t * w[:, None, None] + bias[:, None, None]
    if scale is not None:
        t = t * (1 + scale) + shift
    return torch.nn.functional.silu(t), t


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_adjoint_reference_equals_autograd_vjp_of_the_forward_chain(with_scale, with_weight):
    S, B, C, H, W = 2, 3, 5, 4, 6
    h = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    w, bias = (torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)) if with_weight else (None, None)
    scale, shift = (torch.randn(B, C, 1, 1, dtype=torch.float64), torch.randn(B, C, 1, 1, dtype=torch.float64)) \
        if with_scale else (None, None)
    x = torch.randn(S, B, C, H, W, dtype=torch.float64)
    residual = torch.randn(S, B, C, H, W, dtype=torch.float64)
    y, t = _resblock_tail(h, w, bias, scale, shift)
    vjps = torch.stack([torch.autograd.grad(y, h, x[s], retain_graph=True)[0] for s in range(S)])
    out = silu_affine_adjoint_reference(x, t.detach(), w, scale, residual)
    assert torch.allclose(out, residual + vjps, rtol=1e-12, atol=1e-12)
    assert torch.allclose(silu_derivative(t.detach()), torch.autograd.grad(torch.nn.functional.silu(t).sum(), t)[0])


def test_references_compute_in_place_only_where_allowed_and_give_the_same_bits():
    """Without autograd or export the references overwrite their own temporaries (and, asked, their input x):
    the same numbers as the functional ops autograd and export get, with fewer tensors alive."""
    S, B, C, H, W = 2, 3, 5, 4, 6
    x, t, residual = torch.randn(S, B, C, H, W), torch.randn(B, C, H, W) * 3, torch.randn(S, B, C, H, W)
    w, scale = torch.randn(C), torch.randn(B, C, 1, 1)
    f, g = torch.randn(B, 3, H, W) * 7, torch.randn(B, 6, H, W) * 1e-3
    with torch.enable_grad():  # autograd records through a leaf that needs grad: the functional path
        tg = t.clone().requires_grad_(True)
        functional = silu_affine_adjoint_reference(x, tg, w, scale, residual).detach()
        d_functional = silu_derivative(tg).detach()
        pair_functional = [r.detach() for r in tap_pair_norm_reference(f.clone().requires_grad_(True), g)]
    with torch.no_grad():
        xc = x.clone()
        consumed = silu_affine_adjoint_reference(xc, t, w, scale, residual, consume_x=True)
        kept_x = x.clone()
        plain = silu_affine_adjoint_reference(kept_x, t, w, scale, residual)
        assert torch.equal(consumed, functional) and torch.equal(plain, functional)
        assert consumed.data_ptr() == xc.data_ptr()  # written into the x it was given
        assert torch.equal(kept_x, x)  # without consume_x, x is left as it was
        assert torch.equal(silu_derivative(t), d_functional)
        pair = tap_pair_norm_reference(f, g)
        assert all(torch.equal(a, b) for a, b in zip(pair, pair_functional))
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = silu_affine_adjoint_reference(xg, t, w, scale, residual, consume_x=True)
        assert out.data_ptr() != xg.data_ptr() and out.requires_grad  # autograd keeps its functional graph


def test_tap_norm_references_give_unit_rms_and_the_log_rms():
    f, g = torch.randn(2, 3, 4, 5) * 7, torch.randn(2, 6, 4, 5) * 1e-3
    out, s = tap_pair_norm_reference(f, g)
    assert torch.allclose(out[:, :3].pow(2).mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert torch.allclose(out[:, 3:].pow(2).mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert torch.allclose(s[:, 1], 0.5 * torch.log(g.pow(2).mean(dim=(1, 2, 3))), atol=1e-5)
    x1, s1 = tap_rms_norm_reference(f)
    assert torch.allclose(x1, out[:, :3]) and torch.allclose(s1, s[:, 0])


def test_dispatchers_name_the_reference_on_cpu_and_return_exactly_its_result():
    f, g = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    for kernel in ("tap_pair_norm", "tap_rms_norm", "tap_attention", "silu_affine_adjoint"):
        assert backend_for(f, kernel) == "torch"
    assert backend_for(f) == "torch"  # the original one-argument form
    assert all(torch.equal(a, b) for a, b in zip(tap_pair_norm(f, g), tap_pair_norm_reference(f, g)))
    assert all(torch.equal(a, b) for a, b in zip(tap_rms_norm(g), tap_rms_norm_reference(g)))
    q, k, v, pos = _attention_inputs(2, 24, 3, 5, "float32")
    assert torch.equal(tap_attention(q, k, v, pos, 4), tap_attention_reference(q, k, v, pos, 4))
    x, t, w, sc = torch.randn(2, 2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.randn(3), torch.randn(2, 3, 1, 1)
    assert torch.equal(silu_affine_adjoint(x, t, w, sc, x), silu_affine_adjoint_reference(x, t, w, sc, x))


def test_backend_choice_follows_device_dtype_and_kernel():
    fake_cuda = lambda dtype: types.SimpleNamespace(is_cuda=True, dtype=dtype)
    assert backend_for(fake_cuda(torch.float16), "tap_attention") == "triton"
    assert backend_for(fake_cuda(torch.bfloat16), "tap_attention") == "torch"  # bf16 dot unverifiable on CPU
    assert backend_for(fake_cuda(torch.bfloat16), "silu_affine_adjoint") == "triton"
    assert backend_for(fake_cuda(torch.float64), "tap_pair_norm") == "torch"
    assert backend_for(fake_cuda(torch.float16), "tap_attention", needs_grad=True) == "torch"  # forward-only kernels
    with pytest.raises(ValueError, match="unknown kernel"):
        backend_for(torch.zeros(1), "tap_norm")


def test_the_kernel_switch_sends_every_dispatch_to_the_reference(monkeypatch):
    """TAPDIFF_KERNELS=reference (or using_kernels in one process) is the real switch the GPU timing compares with."""
    from engine.errors import InvalidInput
    from kernels import KERNELS_ENV, kernel_choice, using_kernels

    fake_cuda = types.SimpleNamespace(is_cuda=True, dtype=torch.float16)
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert kernel_choice() == "auto" and backend_for(fake_cuda, "tap_pair_norm") == "triton"
    monkeypatch.setenv(KERNELS_ENV, "reference")
    assert backend_for(fake_cuda, "tap_pair_norm") == "torch"
    with using_kernels("auto"):  # a block overrides the environment, and ends
        assert backend_for(fake_cuda, "tap_attention") == "triton"
    assert kernel_choice() == "reference"
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(InvalidInput, match="TAPDIFF_KERNELS='fast'"):
        backend_for(fake_cuda, "tap_pair_norm")
    with pytest.raises(InvalidInput, match="unknown kernel choice"):
        with using_kernels("triton"):
            pass


def test_export_traces_the_reference_even_on_cuda(monkeypatch):
    """An exported graph must hold operators ONNX and TensorRT know, not a Triton launch."""
    fake_cuda = types.SimpleNamespace(is_cuda=True, dtype=torch.float16)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert backend_for(fake_cuda, "tap_attention") == "torch"


def test_dispatchers_route_to_triton_when_backend_for_says_so_and_pass_it_their_autograd_need(monkeypatch):
    import kernels.attention as ta
    import kernels.attention_triton as tat
    import kernels.silu_adjoint as sa
    import kernels.silu_adjoint_triton as sat
    import kernels.tap_norm as tn
    import kernels.tap_norm_triton as tnt

    calls, grad_flags = [], []

    def fake_cuda_backend(x, kernel="tap_pair_norm", needs_grad=False):
        grad_flags.append(needs_grad)
        return "torch" if needs_grad else "triton"

    for mod in (sa, ta, tn):
        monkeypatch.setattr(mod, "backend_for", fake_cuda_backend)
    for mod, name in ((sat, "silu_affine_adjoint_triton"), (tat, "tap_attention_triton"),
                      (tnt, "tap_pair_norm_triton"), (tnt, "tap_rms_norm_triton")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: calls.append(_n) or _n)
    f = torch.randn(1, 8, 2, 3)
    assert tap_pair_norm(f, f) == "tap_pair_norm_triton" and tap_rms_norm(f) == "tap_rms_norm_triton"
    assert tap_attention(f, f, f, f[:1], 2) == "tap_attention_triton"
    assert silu_affine_adjoint(f, f, None) == "silu_affine_adjoint_triton"
    assert len(calls) == 4 and grad_flags == [False] * 4
    w = torch.randn(8, requires_grad=True)  # a trainable operand: the forward-only kernel must be skipped
    assert isinstance(silu_affine_adjoint(f, f, w), torch.Tensor) and grad_flags[-1] is True
    assert isinstance(tap_attention(f, f, f, f[:1].requires_grad_(), 2), torch.Tensor) and grad_flags[-1] is True
    assert len(calls) == 4


def test_dispatchers_see_when_autograd_needs_the_reference():
    q, k, v, pos = _attention_inputs(1, 8, 2, 3, "float32")
    assert not needs_grad(q, k, v, pos)
    pos.requires_grad_(True)  # the learned positional term while ScoreSubnet trains
    assert needs_grad(q, k, v, pos)
    with torch.no_grad():
        assert not needs_grad(q, k, v, pos)
    out = tap_attention(q, k, v, pos, 2)
    (grad,) = torch.autograd.grad(out.sum(), pos)
    assert grad.shape == pos.shape and grad.abs().sum() > 0


def test_wrappers_reject_mismatched_inputs():
    q = torch.randn(1, 12, 3, 4)
    with pytest.raises(ValueError, match="heads"):
        tap_attention(q, q, q, q, 5)
    with pytest.raises(ValueError, match="pos"):
        tap_attention(q, q, q, q[:, :6], 4)
    with pytest.raises(ValueError, match="x must be"):
        silu_affine_adjoint(torch.randn(2, 1, 12, 3, 5), q, None)
    with pytest.raises(ValueError, match="scale"):
        silu_affine_adjoint(q, q, None, scale=torch.randn(1, 12, 3, 4))


def test_triton_wrappers_issue_no_host_reads_or_host_made_tensors(interpreted):
    """Every wrapper and plan, run for real (interpreter): no aten op a CUDA graph could not capture."""
    assert len(interpreted["host_ops"]) == 5
    for name, r in interpreted["host_ops"].items():
        assert r["n_ops"] > 0 and r["host_ops"] == [], (name, r)


def test_kernel_wrappers_create_no_tensors_from_host_values():
    """The same rule over the source, for branches the run above does not take: no torch.tensor/as_tensor/
    from_numpy, .item(), .tolist(), .cpu() or .numpy() anywhere in the Triton wrappers."""
    banned_calls = {"tensor", "as_tensor", "from_numpy"}
    banned_methods = {"item", "tolist", "cpu", "numpy"}
    for path in (ROOT / "kernels").glob("*_triton.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = ast.unparse(node.func.value)
                assert not (owner == "torch" and node.func.attr in banned_calls), (path.name, ast.unparse(node))
                assert node.func.attr not in banned_methods, (path.name, ast.unparse(node))


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpret_main()


def test_each_dispatcher_reaches_its_triton_wrapper_under_the_device_guard(monkeypatch):
    """The Triton branch of every dispatcher (taken only on CUDA) runs here with the wrapper swapped for its
    reference: a name missing on that branch (the device guard, an import) fails on CPU, not first on a GPU."""
    import kernels.attention as attention
    import kernels.attention_triton as attention_triton
    import kernels.silu_adjoint as silu_adjoint
    import kernels.silu_adjoint_triton as silu_adjoint_triton
    import kernels.tap_norm as tap_norm
    import kernels.tap_norm_triton as tap_norm_triton

    calls = []
    for dispatcher in (attention, silu_adjoint, tap_norm):
        monkeypatch.setattr(dispatcher, "backend_for", lambda *a, **k: "triton")
    for module, name, ref in [(tap_norm_triton, "tap_rms_norm_triton", tap_rms_norm_reference),
                              (tap_norm_triton, "tap_pair_norm_triton", tap_pair_norm_reference),
                              (attention_triton, "tap_attention_triton", tap_attention_reference),
                              (silu_adjoint_triton, "silu_affine_adjoint_triton", silu_affine_adjoint_reference)]:
        monkeypatch.setattr(module, name, lambda *a, _ref=ref, _name=name, **k: calls.append(_name) or _ref(*a))
    f = torch.randn(2, 8, 4, 4)
    tap_rms_norm(f)
    tap_pair_norm(f, f)
    q = torch.randn(2, 8, 4, 4)
    tap_attention(q, q, q, torch.randn(1, 8, 4, 4), 2)
    silu_affine_adjoint(torch.randn(2, 2, 8, 4, 4), f, torch.randn(8))
    assert calls == ["tap_rms_norm_triton", "tap_pair_norm_triton", "tap_attention_triton", "silu_affine_adjoint_triton"]
