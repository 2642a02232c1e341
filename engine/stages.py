"""Named stages of a sampling step, for profiling: ``with stage("attention"): ...``.

A stage is a torch.profiler range (``record_function``), an NVTX range on CUDA, and the label the MAC
counter of ``engine.evaluation.profile`` attributes arithmetic to. Stages nest: the innermost one owns the
work. With no profiler running a stage costs about a microsecond, so the hot path keeps them.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import torch

STAGES = ("classifier forward", "classifier adjoint", "tap normalisation", "attention", "decoder",
          "preconditioning, guidance and solver update", "vocoder")
_local = threading.local()


@functools.lru_cache(maxsize=1)
def _nvtx() -> bool:
    return torch.cuda.is_available()


def current_stage() -> str | None:
    return getattr(_local, "stack", [None])[-1]


@contextlib.contextmanager
def stage(name: str):
    stack = _local.__dict__.setdefault("stack", [None])
    stack.append(name)
    if _nvtx():
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if _nvtx():
            torch.cuda.nvtx.range_pop()
        stack.pop()
