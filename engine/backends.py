"""Which runtime evaluates the score: the solvers call ``model(x, sigma[, onehot, gamma]) -> denoised``
and cannot tell them apart.

- ``torch``: the score model itself, eager (``engine.diffusion.score_model``).
- ``onnxruntime``: the same module exported to ONNX (``export.artifacts``, cached), run by onnxruntime's
  CPU provider, or its CUDA provider with IOBinding on a GPU.
- ``tensorrt``: TensorRT plans built from those graphs, on a GPU only (never run on this project's machines).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch

from .diffusion.score_model import GuidedDenoiser
from .storage.bundle import Bundle

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# The default, "auto": onnxruntime where it is installed, else torch. Chosen by measurement on this CPU
# (benchmarks/results/bench/bench.md, benchmarks/results/ort_settings.md): the exported graph in onnxruntime
# took 0.75x eager torch's time per guided score evaluation at batch 1, 0.85x at 16 and 0.42x at 64, with no
# more memory, and matches it to ~1e-5 relative.
DEFAULT_BACKEND = "auto"


def resolve_backend(name: str) -> str:
    """``name``, with "auto" resolved to onnxruntime when onnx and onnxruntime are importable, else torch."""
    if name != "auto":
        return name
    return "onnxruntime" if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")) else "torch"


class BackendError(RuntimeError):
    """A backend that cannot run here as asked: no GPU, a provider that onnxruntime lacks or fell back from."""


def score_backend(name: str, model: GuidedDenoiser, bundle: Bundle, device: torch.device,
                  cache_dir: str | Path | None = None, batches: tuple[int, ...] | None = None,
                  max_batch: int = 64, fp16: bool = False, log: Callable[[str], None] = print):
    """The score model of ``bundle`` as run by backend ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name == "torch":
        return model
    if name == "tensorrt" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise BackendError("the tensorrt backend needs an NVIDIA GPU: run with device='cuda' on a machine with one "
                           "(this machine has none visible to torch)")
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # export's parity check and the onnxruntime backend both need them
        raise ImportError(f"the {name} backend needs {' and '.join(missing)}: pip install 'tapdiff[export]'")
    from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs

    spec = GraphSpec.of(bundle, model, batches)
    graphs = ensure_score_graphs(model, bundle, spec, cache_dir or default_cache_dir(), log)
    if name == "onnxruntime":
        from export.ort_runtime import OrtScoreModel

        return OrtScoreModel(graphs, device=str(device))
    from export.tensorrt_build import cached_engine
    from export.trt_runtime import TrtScoreModel, read_manifest

    plans = {key: cached_engine(path, path.parent / "trt", None if key[1] is not None else (1, max_batch, max_batch),
                                fp16) for key, path in graphs.items()}
    return TrtScoreModel(plans, {k: read_manifest(p) for k, p in graphs.items()}, str(device), max_batch)
