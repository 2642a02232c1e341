"""Which runtime evaluates the score: the solvers call ``model(x, sigma[, onehot, gamma]) -> denoised``
and cannot tell them apart.

- ``torch``: the score model itself, eager (``engine.diffusion.score_model``).
- ``onnxruntime``: the same module exported to ONNX (``export.artifacts``, cached), run by onnxruntime's
  CPU provider, or its CUDA provider with IOBinding on a GPU.
- ``tensorrt``: TensorRT plans built from those graphs, on a GPU only (never run on this project's machines).
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

from .diffusion.score_model import GuidedDenoiser
from .storage.bundle import Bundle

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# The default, "auto": on a CPU, onnxruntime where it is installed, else torch. Chosen by measurement on this CPU
# (benchmarks/results/bench/bench.md, benchmarks/results/ort_settings.md): the exported graph in onnxruntime
# took 0.75x eager torch's time per guided score evaluation at batch 1, 0.85x at 16 and 0.42x at 64, with no
# more memory, and matches it to ~1e-5 relative. On CUDA, torch: its solver steps are captured in CUDA graphs,
# which onnxruntime's cannot be (not measured on a GPU yet).
DEFAULT_BACKEND = "auto"


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """``name``, with "auto" resolved for ``device``: torch on CUDA; on a CPU onnxruntime when onnx and
    onnxruntime are importable, else torch."""
    if name != "auto":
        return name
    if torch.device(device).type != "cpu":
        return "torch"
    return "onnxruntime" if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")) else "torch"


def backend_can_be_captured(name: str) -> bool:
    """Whether a backend's score evaluation can sit inside a CUDA graph: eager torch, and TensorRT (enqueued
    on torch's current stream, which is the capturing one); not onnxruntime, which runs on its own stream and
    synchronises."""
    return name in ("torch", "tensorrt")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


class BackendError(RuntimeError):
    """A backend that cannot run here as asked: no GPU, a provider that onnxruntime lacks or fell back from."""


def score_backend(name: str, model: GuidedDenoiser, bundle: Bundle, device: torch.device,
                  cache_dir: str | Path | None = None, batches: tuple[int, ...] | None = None,
                  max_batch: int = 64, fp16: bool = False, log: Callable[[str], None] = _warn):
    """The score model of ``bundle`` as run by backend ``name``. Graphs are always exported from a CPU copy
    of the model (with CPU example inputs), whatever device ``model`` is on."""
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

    on_cpu = model if _on_cpu(model) else copy.deepcopy(model).cpu()
    spec = GraphSpec.of(bundle, on_cpu, batches)
    graphs = ensure_score_graphs(on_cpu, bundle, spec, cache_dir or default_cache_dir(), log)
    if name == "onnxruntime":
        from export.ort_runtime import OrtScoreModel

        return OrtScoreModel(graphs, device=str(device))
    from export.tensorrt_build import cached_engine
    from export.trt_runtime import TrtScoreModel, read_manifest

    plans = {key: cached_engine(path, path.parent / "trt", None if key[1] is not None else (1, max_batch, max_batch),
                                fp16, device=str(device)) for key, path in graphs.items()}
    return TrtScoreModel(plans, {k: read_manifest(p) for k, p in graphs.items()}, str(device), max_batch)


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers()))
