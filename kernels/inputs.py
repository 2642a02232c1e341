"""Input checks shared by each kernel's dispatcher and its Triton wrapper (skipped while tracing for export:
shapes are symbolic then, and the exported graph cannot carry the checks)."""
from __future__ import annotations

import torch

from engine.errors import InvalidInput


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # shapes are symbolic while exporting, and the exported graph cannot carry these checks
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise InvalidInput(f"q, k, v must share one (B, C, H, W) shape: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if pos.shape != (1, *q.shape[1:]):
        raise InvalidInput(f"pos must be (1, C, H, W) = {(1, *q.shape[1:])}, got {tuple(pos.shape)}")
    if heads < 1 or q.shape[1] % heads:
        raise InvalidInput(f"channels {q.shape[1]} do not split into {heads} heads")
    if len({t.dtype for t in (q, k, v, pos)}) != 1 or len({t.device for t in (q, k, v, pos)}) != 1:
        raise InvalidInput("q, k, v and pos must share dtype and device")



def check_adjoint_inputs(x, t, weight, scale, residual) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # shapes are symbolic while exporting, and the exported graph cannot carry these checks
    if t.dim() != 4 or x.dim() not in (4, 5) or x.shape[-4:] != t.shape:
        raise InvalidInput(f"x must be (S, B, C, H, W) or (B, C, H, W) over t (B, C, H, W): {tuple(x.shape)} vs {tuple(t.shape)}")
    B, C = t.shape[:2]
    if weight is not None and weight.shape != (C,):
        raise InvalidInput(f"weight must be ({C},), got {tuple(weight.shape)}")
    if scale is not None and (scale.dim() != 4 or scale.shape[2:] != (1, 1) or scale.shape[0] not in (1, B)
                              or scale.shape[1] not in (1, C)):
        raise InvalidInput(f"scale must broadcast to ({B}, {C}, 1, 1), got {tuple(scale.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise InvalidInput(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    tensors = [a for a in (x, t, weight, scale, residual) if a is not None]
    if len({a.dtype for a in tensors}) != 1 or len({a.device for a in tensors}) != 1:
        raise InvalidInput("all inputs must share dtype and device")
