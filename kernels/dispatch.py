"""The one place that decides whether a fused kernel runs in Triton or as its PyTorch reference.

Every public kernel function (``tap_pair_norm``, ``tap_rms_norm``, ``tap_attention``,
``silu_affine_adjoint``) asks ``backend_for(tensor, kernel, needs_grad=...)`` and runs what it answers:
"triton" when the tensor is on CUDA, Triton imports, the kernel supports the dtype and no autograd graph is
needed, "torch" (the reference) otherwise. The Triton kernels are forward-only (no backward): a call whose
inputs require grad (e.g. TapAttention while the decoder trains) takes the reference, so gradients are never
silently dropped. Callers and tests can ask the same question to see which path a call takes.

The switch: ``TAPDIFF_KERNELS=reference`` in the environment sends every call to the reference (``auto``, the
default, dispatches as above); ``using_kernels("reference")`` does the same for a block of one process (the GPU
timing script compares both in one process). A kernel already captured in a CUDA graph stays in it: switch
before an Engine builds its runners.
"""
from __future__ import annotations

import contextlib
import functools
import os

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


KERNELS_ENV = "TAPDIFF_KERNELS"
KERNEL_CHOICES = ("auto", "reference")  # auto: Triton where it applies; reference: the PyTorch references always
_chosen: str | None = None  # using_kernels' choice for this process (None: the environment's)


def kernel_choice() -> str:
    """``auto`` or ``reference``: ``using_kernels``' choice where one is active, else ``$TAPDIFF_KERNELS``
    (default auto); any other value is refused by name."""
    if _chosen is not None:
        return _chosen
    value = os.environ.get(KERNELS_ENV, "").strip().lower() or "auto"
    if value not in KERNEL_CHOICES:
        raise InvalidInput(f"{KERNELS_ENV}={os.environ[KERNELS_ENV]!r}: expected one of {', '.join(KERNEL_CHOICES)}")
    return value


@contextlib.contextmanager
def using_kernels(choice: str):
    """Every dispatch in this process takes ``choice`` (``auto`` or ``reference``) inside the block."""
    global _chosen
    if choice not in KERNEL_CHOICES:
        raise InvalidInput(f"unknown kernel choice {choice!r}; expected one of {', '.join(KERNEL_CHOICES)}")
    saved, _chosen = _chosen, choice
    try:
        yield
    finally:
        _chosen = saved


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
    supported dtype and ``needs_grad`` False, not while tracing for export and not switched to the reference
    (``kernel_choice``); else "torch" (the reference). ``kernel`` defaults to
    "tap_pair_norm" (the original one-argument API)."""
    if kernel not in SUPPORTED_DTYPES:
        raise InvalidInput(f"unknown kernel {kernel!r}; expected one of {sorted(SUPPORTED_DTYPES)}")
    if tracing():
        return "torch"  # an exported graph holds the reference's operators, which ONNX and TensorRT know
    if (x.is_cuda and x.dtype in SUPPORTED_DTYPES[kernel] and not needs_grad and kernel_choice() == "auto"
            and triton_available()):
        return "triton"
    return "torch"


def on_device_of(t: torch.Tensor):
    """The device guard for a launch on ``t``'s GPU: Triton launches on the current CUDA device, which need not
    be ``t``'s (``cuda:1``); a no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
