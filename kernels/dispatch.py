"""The one place that decides whether a fused kernel runs in Triton or as its PyTorch reference.

Every public kernel function (``tap_pair_norm``, ``tap_rms_norm``, ``tap_attention``,
``silu_affine_adjoint``) asks ``backend_for(tensor, kernel, needs_grad=...)`` and runs what it answers:
"triton" when the tensor is on CUDA, Triton imports, the kernel supports the dtype and no autograd graph is
needed, "torch" (the reference) otherwise. The Triton kernels are forward-only (no backward): a call whose
inputs require grad (e.g. TapAttention while the decoder trains) takes the reference, so gradients are never
silently dropped. Callers and tests can ask the same question to see which path a call takes.
"""
from __future__ import annotations

import functools

import torch

from engine.errors import InvalidInput

# dtypes each Triton kernel accepts. tap_attention leaves bfloat16 to the reference: its tl.dot cannot be
# checked on CPU (the interpreter's bf16 dot is wrong), and an unverified path is not dispatched to.
SUPPORTED_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "tap_pair_norm": (torch.float32, torch.float16, torch.bfloat16),
    "tap_rms_norm": (torch.float32, torch.float16, torch.bfloat16),
    "tap_attention": (torch.float32, torch.float16),
    "silu_affine_adjoint": (torch.float32, torch.float16, torch.bfloat16),
}


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a graph through these inputs (so a forward-only kernel must not run)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def tracing() -> bool:
    """Whether a graph is being traced for export (its operators are what ONNX and TensorRT get)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def may_overwrite(*tensors: torch.Tensor | None) -> bool:
    """Whether a reference may compute in place on its own temporaries: no autograd graph through these inputs
    and no export trace (an exported graph keeps the functional operators). The same numbers either way."""
    return not needs_grad(*tensors) and not tracing()


def backend_for(x: torch.Tensor, kernel: str = "tap_pair_norm", *, needs_grad: bool = False) -> str:
    """The implementation ``kernel`` uses for inputs like ``x``: "triton" on CUDA with Triton installed, a
    supported dtype and ``needs_grad`` False, and not while tracing for export; else "torch" (the reference). ``kernel`` defaults to
    "tap_pair_norm" (the original one-argument API)."""
    if kernel not in SUPPORTED_DTYPES:
        raise InvalidInput(f"unknown kernel {kernel!r}; expected one of {sorted(SUPPORTED_DTYPES)}")
    if tracing():
        return "torch"  # an exported graph holds the reference's operators, which ONNX and TensorRT know
    if x.is_cuda and x.dtype in SUPPORTED_DTYPES[kernel] and not needs_grad and triton_available():
        return "triton"
    return "torch"


def on_device_of(t: torch.Tensor):
    """The device guard for a launch on ``t``'s GPU: Triton launches on the current CUDA device, which need not
    be ``t``'s (``cuda:1``); a no-op for CPU tensors (the interpreter)."""
    import contextlib

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
