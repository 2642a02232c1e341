"""Fused kernels for tapdiff's hot path, each beside its plain PyTorch reference.

Public functions (each dispatches through ``backend_for(x, kernel, needs_grad=...)``: Triton on CUDA when no
autograd graph is needed, since the kernels are forward-only; the reference elsewhere):

* ``tap_pair_norm(f, g) -> (out, log_rms)``, ``tap_rms_norm(x) -> (out, log_rms)`` (``tap_norm``); ``tap_mean_square(x)``,
  the statistic they divide by (a plain reduction, passed back to them when a caller needs it first), ``log_rms``
* ``tap_attention(q, k, v, pos, heads) -> out`` (``attention``)
* ``silu_affine_adjoint(x, t, weight, scale=None, residual=None) -> out`` (``silu_adjoint``)

The Triton kernels live in ``*_triton.py`` and import triton at module level; nothing here imports them
until a CUDA tensor asks for one. They are verified on CPU only, under TRITON_INTERPRET=1, and compiled
(not run) for sm_90/sm_80 by ``kernels.aot``.
"""
from .attention import multi_head_attention, tap_attention, tap_attention_reference
from .dispatch import (KERNELS_ENV, SUPPORTED_DTYPES, backend_for, kernel_choice, may_overwrite, needs_grad,
                       triton_available, using_kernels)
from .rowwise import per_row, row_linear
from .silu_adjoint import (
    silu_affine_adjoint,
    silu_affine_adjoint_reference,
    silu_derivative,
)
from .tap_norm import (
    log_rms,
    tap_mean_square,
    tap_pair_norm,
    tap_pair_norm_reference,
    tap_rms_norm,
    tap_rms_norm_reference,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "backend_for",
    "log_rms",
    "may_overwrite",
    "multi_head_attention",
    "needs_grad",
    "per_row",
    "row_linear",
    "silu_affine_adjoint",
    "silu_affine_adjoint_reference",
    "silu_derivative",
    "tap_attention",
    "tap_attention_reference",
    "tap_mean_square",
    "tap_pair_norm",
    "tap_pair_norm_reference",
    "tap_rms_norm",
    "tap_rms_norm_reference",
    "triton_available",
    "KERNELS_ENV",
    "kernel_choice",
    "using_kernels",
]
