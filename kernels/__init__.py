"""Fused kernels for tapdiff's hot path, each beside its plain PyTorch reference.

Today this holds the PyTorch references the engine calls; the Triton kernels that replace them on CUDA
are planned work (see README, "Status").
"""
from .tap_norm import tap_rms_norm

__all__ = ["tap_rms_norm"]
