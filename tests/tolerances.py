"""Every tolerance the kernel tests and the GPU tests judge with, defined once, each with why it is that size.

Used by ``tests/test_kernels.py`` (the Triton kernels under ``TRITON_INTERPRET=1`` on CPU), ``tests/gpu/`` (the
same kernels compiled for a GPU, the Engine on CUDA, the captured sampler, onnxruntime) and ``tests/gpu_checks.py``
(the checks both share).

How an error is measured (``rel_error``): max |out - ref| over the elements where the reference is not NaN,
divided by a scale that makes sense for the output (``Tolerance.scale``; None: max |ref|). The reference is
evaluated in float64 from the very inputs the kernel saw (already rounded to its dtype), so the error is the
kernel's own arithmetic. A NaN where the reference has none, or a shape mismatch, fails whatever the tolerance.

The kernel tolerances follow the arithmetic, in units of each dtype's unit roundoff u (half an ulp at 1):
the kernels load fp16/bf16, compute in fp32 and round their outputs to the input dtype.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

U32 = 2.0 ** -24
"""float32's unit roundoff: every fp32 operation inside a kernel (sums, rsqrt, log, exp2) errs by about this."""

UNIT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
"""Unit roundoff of each dtype a kernel may write: its output rounding, and the rounding of operands a kernel casts
to that dtype before a dot (fp16 on tensor cores)."""

EXP2_ERR = 2.0 ** -21
"""exp2 on the GPU (ex2.approx) errs by up to ~2 ulp of fp32 (a few 2^-23 relative): bounded by 2^-21."""

RSQRT_LOG_ERR = 8 * U32
"""rsqrt and log in fp32 (approximate instructions): a few ulp each; 8 u(fp32) covers both."""


class Tolerance(NamedTuple):
    tol: float  # the largest error accepted, in units of ``scale``
    scale: float | None  # what the absolute error is divided by; None: max |ref|
    why: str  # one line: where the size comes from


def unit(dtype: torch.dtype | str) -> float:
    """The unit roundoff of ``dtype`` (a torch dtype or its name, "float16")."""
    return UNIT[getattr(torch, dtype) if isinstance(dtype, str) else dtype]


def _name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def _max_abs(t: torch.Tensor) -> float:
    """max |t| over its finite elements (NaNs are judged by the NaN checks, not by the size of a tolerance)."""
    t = t.detach().double()
    t = t[torch.isfinite(t)]
    return float(t.abs().max()) if t.numel() else 0.0


def rel_error(out: torch.Tensor, ref: torch.Tensor, scale: float | None = None) -> float:
    """max |out - ref| / ``scale`` (default max |ref|) over the reference's non-NaN elements; inf for a shape
    mismatch, NaN when ``out`` has a NaN where ``ref`` has none (so it never passes a ``<=`` check)."""
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    if o.shape != r.shape:
        return math.inf
    valid = ~r.isnan()
    if bool((o.isnan() & valid).any()):
        return math.nan
    if scale is None:
        scale = _max_abs(r[valid])
    diff = (o - r)[valid].abs()
    return (float(diff.max()) if diff.numel() else 0.0) / max(scale, 1e-30)


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------
def tap_norm_tol(n: int, dtype: torch.dtype | str) -> float:
    """A tap normalised by its RMS over n elements per sample (``tap_pair_norm``, ``tap_rms_norm``), relative.

    The sum of squares is accumulated in fp32 over n terms (blocked: error grows like sqrt(n) u32; 4 sqrt(n) u32
    is a safe multiple), rsqrt and log add a few ulp (8 u32), and the output is rounded once to its dtype
    (2u: the scale's rounding and the product's). fp32: ~1e-6 at the engine's largest tap (n = 184,320)."""
    return 2 * unit(dtype) + 4 * math.sqrt(n) * U32 + RSQRT_LOG_ERR


def tap_norm_tolerances(n: int, log_rms_ref: torch.Tensor, dtype: torch.dtype | str) -> list[Tolerance]:
    """The two outputs of a tap norm: the normalised taps against max |ref|; the log-RMS as an absolute error in
    nats (which is the RMS's relative error) against max(1, max |log-RMS|): it is near 0 for a tap of RMS ~1, and
    judging it relative to itself would fail a correct kernel."""
    tol = tap_norm_tol(n, dtype)
    why = (f"2u({_name(dtype)}) output rounding + 4 sqrt(n) 2^-24 for the fp32 sum of squares over n={n} "
           "+ 8 2^-24 for rsqrt/log")
    return [Tolerance(tol, None, "normalised taps vs max |ref|: " + why),
            Tolerance(tol, max(1.0, _max_abs(log_rms_ref)),
                      "log-RMS, absolute nats against max(1, max |log-RMS|) (near 0: not against itself): " + why)]


def attention_tolerance(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int,
                        dtype: torch.dtype | str) -> Tolerance:
    """``tap_attention``'s output against max |v|: the output is a convex combination of v's rows.

    A logit q.k / sqrt(dh) errs by max sum_d |q_d k_d| / sqrt(dh) x (2u + dh u32): q * scale and k + pos are
    rounded to the dot's dtype (u each), and the dot accumulates dh products in fp32. A logit error d moves the
    softmax weights by ~d relative (and the output by ~d max |v|); then the probabilities P are rounded to the PV
    dot's dtype (u), exp2 errs by ``EXP2_ERR``, the running sums over N tokens add N u32, and the output is
    rounded once (u)."""
    from kernels.attention import split_heads

    dh, n = q.shape[1] // heads, q.shape[2] * q.shape[3]
    qa = split_heads((q.double() + pos.double()).abs().nan_to_num(0.0), heads)
    ka = split_heads((k.double() + pos.double()).abs().nan_to_num(0.0), heads)
    s_abs = float((qa @ ka.transpose(-1, -2)).max()) / math.sqrt(dh)
    u = unit(dtype)
    d_logit = s_abs * (2 * u + dh * U32)
    tol = d_logit + u + EXP2_ERR + n * U32 + u
    return Tolerance(tol, _max_abs(v), (
        f"vs max |v| (a convex combination of v's rows): logit error max sum|qk|/sqrt(dh) = {s_abs:.2f} x "
        f"(2u + dh 2^-24) = {d_logit:.2g}, + P rounded to the PV dot's dtype (u) + exp2 (2^-21) + running sums over "
        f"N={n} (N 2^-24) + output rounding (u), u = u({_name(dtype)})"))


def adjoint_tolerance(t: torch.Tensor, dtype: torch.dtype | str) -> Tolerance:
    """``silu_affine_adjoint``'s output against max |ref|: an elementwise chain (sigmoid s of t, silu'(t) =
    s (1 + t (1 - s)), times the cotangent, the weight and the FiLM scale, plus the residual) in fp32.

    sigmoid's exp and 1 - s cancel, and t multiplies (1 - s): each op's rounding is scaled by up to max |t|, so
    (max |t| + 8) u32 for the chain plus 2^-22 for exp; doubled for the two cotangents' shared terms; plus 2u output
    rounding."""
    t_max = _max_abs(t)
    tol = 2 * ((t_max + 8) * U32 + 2.0 ** -22) + 2 * unit(dtype)
    return Tolerance(tol, None, f"vs max |ref|: elementwise; sigmoid's exp and 1 - s cancel, each op's rounding "
                                f"scaled by up to max |t| = {t_max:.1f}: 2((max|t| + 8) 2^-24 + 2^-22) + 2u "
                                f"({_name(dtype)}) output rounding")


def kernel_tolerances(kernel: str, args: tuple, refs: tuple, dtype: torch.dtype | str) -> list[Tolerance]:
    """One ``Tolerance`` per output of ``kernel`` called with ``args`` (positional, as the public function takes
    them), given its reference outputs ``refs``; ``dtype``: the dtype the kernel ran in."""
    if kernel == "tap_pair_norm":
        f, g = args[:2]
        return tap_norm_tolerances(max(f[0].numel(), g[0].numel()), refs[1], dtype)
    if kernel == "tap_rms_norm":
        return tap_norm_tolerances(args[0][0].numel(), refs[1], dtype)
    if kernel == "tap_attention":
        q, k, v, pos, heads = args[:5]
        return [attention_tolerance(q, k, v, pos, heads, dtype)]
    if kernel == "silu_affine_adjoint":
        return [adjoint_tolerance(args[1], dtype)]
    raise KeyError(f"no tolerance for kernel {kernel!r}")


# --------------------------------------------------------------------------------------------------------------
# Whole runs: the Engine on CUDA vs the CPU, captured vs eager, onnxruntime vs torch
# --------------------------------------------------------------------------------------------------------------
# Sampling amplifies a perturbation of the denoiser: multiplying D by (1 + r z), z ~ N(0, 1) per element, at every
# evaluation of the shipped checkpoint's default run (euler_ancestral, 15 steps, guidance 3) moves the final
# log-Mels by 30 r nats (tapdiff) and 24 r (two-model), measured on CPU for r = 2^-22, 2^-18, 2^-14 (linear).
# fp32 reassociation between two devices (convolution sums over 9 x 192 terms, GroupNorm and the adjoint) is
# ~sqrt(1728) 2^-24 = 2.5e-6 relative per evaluation, a few 1e-6 to 1e-5 with cancellation: <= 3e-4 nats.
ENGINE_TOL = 2e-3
ENGINE_WHY = ("absolute, in log-Mel nats: sampling amplifies a relative perturbation r of D to ~30 r nats "
              "(measured), fp32 reassociation across devices is <= 1e-5 per evaluation -> <= 3e-4; 2e-3 nats "
              "is 0.2% in amplitude")

# Captured vs eager on one device run the same kernels in the same order; only an algorithm choice (cuDNN under
# capture) can differ: reassociation <= 1e-5 per evaluation, amplified 7-40x in normalised units (30 nats per unit
# perturbation over the per-band std, 0.75-4.6), judged relative to max(1, max |x|) (x spans ~4 to ~130).
CAPTURED_TOL = 2e-4
CAPTURED_WHY = ("relative to max(1, max |eager|), normalised units: the same kernels on the same device; at "
                "most an algorithm choice differs (<= 1e-5 per evaluation, amplified 7-40x)")

# A check that one runner followed new inputs is only as good as the distance between the two runs' outputs: they
# must differ by far more than the tolerance, or a replay that kept the first run's inputs would pass.
APART_FACTOR = 100


def captured_scale(eager: torch.Tensor) -> float:
    """The scale of ``CAPTURED_TOL``: max(1, max |eager|) (normalised log-Mels span ~4 to ~130)."""
    return max(1.0, _max_abs(eager))


# onnxruntime's graph matches eager torch to ~1e-5 relative per evaluation (benchmarks/results/ort_settings.md).
ORT_TOL = 2e-3
ORT_WHY = "absolute, nats: the exported graph matches torch to ~1e-5 per evaluation, amplified ~30x by sampling"
