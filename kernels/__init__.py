"""Fused kernels for tapdiff's hot path, each beside its plain PyTorch reference.

``tap_pair_norm`` dispatches to Triton on CUDA (``backend_for`` says which it uses) and to the reference
elsewhere. The Triton kernels are verified on CPU only, under TRITON_INTERPRET=1.
"""
from .tap_norm import backend_for, tap_pair_norm, tap_pair_norm_reference, tap_rms_norm

__all__ = ["backend_for", "tap_pair_norm", "tap_pair_norm_reference", "tap_rms_norm"]
