"""Per-sample tap RMS normalisation in Triton, log-RMS included, with no host-to-device traffic.

Both public functions write the normalised tap(s) and the log-RMS (in the input dtype) from the kernels
themselves: the wrappers allocate outputs with ``torch.empty`` of shapes known from the input shapes, and
create nothing from host values, so a call can be captured in a CUDA graph.

Two launch plans, picked from the per-sample element count (a shape, never a tensor value):

* one launch (``n_f + n_g <= SINGLE_LAUNCH_MAX``): grid (batch, taps); each program loops over one
  sample's tap twice (sum of squares, then scale-and-store) and writes its log-RMS. The second read
  mostly hits L2. This is the small-tap case (coarse depths, the one-channel input gradient), where a
  second launch would cost more than the data.
* two launches (larger taps): one program per sample would stream ~10^5..10^6 elements on one SM at
  batch 1, so the work is split over (batch, chunks) programs. Launch 1 writes each chunk's partial sum
  of squares to ``partials[b, tap, chunk]``; launch 2 has every program sum its sample's partials (in a
  fixed order: deterministic, no atomics and no zero-fill), scale its chunk into the concatenated output,
  and chunk 0 writes the log-RMS. Two launches are the price of the grid-wide dependency (every chunk's
  scale needs every chunk's sum); a single launch would need a grid barrier, which Triton does not offer
  safely for grids larger than the co-resident programs.

``SINGLE_LAUNCH_MAX`` is a guess (not tuned on a GPU: none was available); ``benchmarks/kernel_bench.py``
times both plans on a GPU so the threshold can be set from measurements.

Verified on CPU only, under TRITON_INTERPRET=1, against ``tap_norm.tap_pair_norm_reference`` and
``tap_norm.tap_rms_norm_reference``; compiled (not run) for sm_90 and sm_80.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engine.errors import InvalidInput

SINGLE_LAUNCH_MAX = 1 << 16  # per-sample elements over all taps up to which one launch does everything
ONE_LAUNCH = {"block": 2048, "num_warps": 8}  # one program streams a whole sample's tap: wide blocks
TWO_LAUNCH = {"block": 1024, "num_warps": 4}


@triton.jit
def _normalise_row(x_row, out_row, log_rms_ptr, n, eps, BLOCK: tl.constexpr):
    """One sample's tap: sum of squares over n elements, log-RMS store, then x * rsqrt(mean + eps)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc += x * x
    ms = tl.sum(acc, axis=0) / n + eps
    tl.store(log_rms_ptr, (0.5 * tl.log(ms)).to(log_rms_ptr.dtype.element_ty))
    r = 1.0 / tl.sqrt(ms)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < n, other=0.0).to(tl.float32)
        tl.store(out_row + offs, (x * r).to(out_row.dtype.element_ty), mask=offs < n)


@triton.jit
def _tap_norm_one_launch_kernel(f_ptr, g_ptr, out_ptr, log_rms_ptr, n_f, n_g, eps,
                                NUM_TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (B, NUM_TAPS). out is (B, n_f + n_g) flat per sample; log_rms is (B, NUM_TAPS)."""
    b = tl.program_id(0).to(tl.int64)
    row = out_ptr + b * (n_f + n_g)
    if tl.program_id(1) == 0:
        _normalise_row(f_ptr + b * n_f, row, log_rms_ptr + b * NUM_TAPS, n_f, eps, BLOCK)
    else:
        _normalise_row(g_ptr + b * n_g, row + n_f, log_rms_ptr + b * NUM_TAPS + 1, n_g, eps, BLOCK)


@triton.jit
def _tap_sumsq_partials_kernel(f_ptr, g_ptr, partials_ptr, n_f, n_g, chunks,
                               NUM_TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (B, chunks): partials[b, tap, chunk] = sum of squares of that chunk of the sample's tap."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    xf = tl.load(f_ptr + b * n_f + offs, mask=offs < n_f, other=0.0).to(tl.float32)
    tl.store(partials_ptr + b * NUM_TAPS * chunks + c, tl.sum(xf * xf, axis=0))
    if NUM_TAPS == 2:
        xg = tl.load(g_ptr + b * n_g + offs, mask=offs < n_g, other=0.0).to(tl.float32)
        tl.store(partials_ptr + (b * 2 + 1) * chunks + c, tl.sum(xg * xg, axis=0))


@triton.jit
def _tap_scale_kernel(f_ptr, g_ptr, partials_ptr, out_ptr, log_rms_ptr, n_f, n_g, chunks, eps,
                      NUM_TAPS: tl.constexpr, BLOCK: tl.constexpr, CHUNKS_P2: tl.constexpr):
    """Grid (B, chunks): sums the sample's partials, scales this chunk into out; chunk 0 writes log-RMS."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    cidx = tl.arange(0, CHUNKS_P2)
    row = out_ptr + b * (n_f + n_g)
    first = c == 0

    pf = tl.load(partials_ptr + b * NUM_TAPS * chunks + cidx, mask=cidx < chunks, other=0.0)
    ms_f = tl.sum(pf, axis=0) / n_f + eps
    tl.store(log_rms_ptr + b * NUM_TAPS, (0.5 * tl.log(ms_f)).to(log_rms_ptr.dtype.element_ty), mask=first)
    xf = tl.load(f_ptr + b * n_f + offs, mask=offs < n_f, other=0.0).to(tl.float32)
    tl.store(row + offs, (xf * (1.0 / tl.sqrt(ms_f))).to(out_ptr.dtype.element_ty), mask=offs < n_f)
    if NUM_TAPS == 2:
        pg = tl.load(partials_ptr + (b * 2 + 1) * chunks + cidx, mask=cidx < chunks, other=0.0)
        ms_g = tl.sum(pg, axis=0) / n_g + eps
        tl.store(log_rms_ptr + b * 2 + 1, (0.5 * tl.log(ms_g)).to(log_rms_ptr.dtype.element_ty), mask=first)
        xg = tl.load(g_ptr + b * n_g + offs, mask=offs < n_g, other=0.0).to(tl.float32)
        tl.store(row + n_f + offs, (xg * (1.0 / tl.sqrt(ms_g))).to(out_ptr.dtype.element_ty), mask=offs < n_g)


def _launch(f: torch.Tensor, g: torch.Tensor | None, eps: float, block: int | None, single_launch: bool | None,
            num_warps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    f = f.contiguous()  # no-op for the classifier's taps on CUDA
    g = None if g is None else g.contiguous()
    B = f.shape[0]
    taps = 1 if g is None else 2
    n_f = math.prod(f.shape[1:])  # per-sample element counts, from shapes only
    n_g = 0 if g is None else math.prod(g.shape[1:])
    channels = f.shape[1] + (0 if g is None else g.shape[1])
    out = torch.empty((B, channels, *f.shape[2:]), dtype=f.dtype, device=f.device)
    log_rms = torch.empty((B, taps) if g is not None else (B,), dtype=f.dtype, device=f.device)
    g_arg = f if g is None else g  # never read when taps == 1
    if single_launch is None:
        single_launch = n_f + n_g <= SINGLE_LAUNCH_MAX
    if single_launch:
        block = block or ONE_LAUNCH["block"]
        _tap_norm_one_launch_kernel[(B, taps)](f, g_arg, out, log_rms, n_f, n_g, eps, NUM_TAPS=taps, BLOCK=block,
                                               num_warps=num_warps or ONE_LAUNCH["num_warps"])
    else:
        block = block or TWO_LAUNCH["block"]
        chunks = triton.cdiv(max(n_f, n_g), block)
        partials = torch.empty((B, taps, chunks), dtype=torch.float32, device=f.device)
        _tap_sumsq_partials_kernel[(B, chunks)](f, g_arg, partials, n_f, n_g, chunks, NUM_TAPS=taps, BLOCK=block,
                                                num_warps=num_warps or TWO_LAUNCH["num_warps"])
        _tap_scale_kernel[(B, chunks)](f, g_arg, partials, out, log_rms, n_f, n_g, chunks, eps, NUM_TAPS=taps,
                                       BLOCK=block, CHUNKS_P2=triton.next_power_of_2(chunks),
                                       num_warps=num_warps or TWO_LAUNCH["num_warps"])
    return out, log_rms


def tap_pair_norm_triton(f: torch.Tensor, g: torch.Tensor, eps: float = 1e-12, *, block: int | None = None,
                         single_launch: bool | None = None, num_warps: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """f (B, Cf, H, W), g (B, Cg, H, W), same dtype/device -> (out (B, Cf + Cg, H, W) in f's dtype, log-RMS
    (B, 2) in f's dtype). ``single_launch``/``block``/``num_warps`` override the plan (tests, benchmarks)."""
    if f.shape[0] != g.shape[0] or f.shape[2:] != g.shape[2:] or f.dtype != g.dtype or f.device != g.device:
        raise InvalidInput(f"taps must share batch, spatial shape, dtype and device: {tuple(f.shape)} {f.dtype} vs "
                           f"{tuple(g.shape)} {g.dtype}")
    return _launch(f, g, eps, block, single_launch, num_warps)


def tap_rms_norm_triton(x: torch.Tensor, eps: float = 1e-12, *, block: int | None = None,
                        single_launch: bool | None = None, num_warps: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) -> (x / RMS per sample, log-RMS (B,)), both in x's dtype."""
    return _launch(x, None, eps, block, single_launch, num_warps)
