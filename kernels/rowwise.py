"""Batch-invariant forms of the small per-row ops of the score path: a row's result must not depend on how many
rows share its batch, so that a clip's bytes do not depend on what it was batched with.

Two kinds of kernel break that, found op by op (``tests/batch_invariance.py``):
- dense layers: a GEMM's kernels (oneDNN and MKL in torch, MLAS in onnxruntime, cuBLAS) take other paths for
  other row counts (a vector path for one row, a tail for the rows past a multiple of the register block);
  ``row_linear`` is an elementwise product and a sum over the last axis instead, whose order is fixed by the
  row's length;
- transcendental elementwise ops on tensors of a few values per row (log of sigma, of a tap's mean square; sin
  and cos of the embeddings): onnxruntime evaluates them by SIMD packets and the elements past the last whole
  packet by a scalar routine that rounds differently, so which elements fall in the tail depends on the batch.
  ``per_row`` evaluates such an op on each value repeated across a full packet (``PACKET`` lanes), so every
  element takes the packet path whatever the batch.
Both cost nothing measurable beside the convolutions (they touch a few thousand values per row).
"""
from __future__ import annotations

from typing import Callable

import torch

PACKET = 16  # lanes of the widest SIMD packet the CPU kernels use (AVX-512 fp32); a multiple of narrower ones


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (x (..., in), weight (out, in)) with each row's sums in an order that no other row
    changes."""
    y = (x.unsqueeze(-2) * weight).sum(-1)
    return y if bias is None else y + bias


def per_row(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an elementwise ``fn``, each element evaluated in a whole SIMD packet of its own copies."""
    return fn(x.unsqueeze(-1).expand(*x.shape, PACKET))[..., 0]
