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
import logging
from pathlib import Path

import torch

from .diffusion.score_model import GuidedDenoiser
from .errors import BackendError, InvalidInput, MissingDependency
from .bundle import Bundle

logger = logging.getLogger(__name__)

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


def batch_invariant_by_construction(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether a backend gives a row of a score evaluation the same bits at any batch size and position with no
    padding: onnxruntime's CPU provider, whose only batch-dependent kernels (dense layers as GEMMs; log, sin and
    cos by SIMD packets with a scalar tail) the score path replaces with ``kernels.rowwise`` forms (checked op by
    op for every model, guided and unguided, by ``tests/test_batch_invariance.py``). Not eager torch on a CPU:
    oneDNN runs a 1x1 convolution as one GEMM over batch x positions, and picks another 3x3 kernel for one
    row at small maps. Not CUDA: cuDNN and cuBLAS choose kernels by shape (never measured here)."""
    return name == "onnxruntime" and torch.device(device).type == "cpu"


def backend_can_be_captured(name: str) -> bool:
    """Whether a backend's score evaluation can sit inside a CUDA graph: eager torch, and TensorRT (enqueued
    on torch's current stream, which is the capturing one); not onnxruntime, which runs on its own stream and
    synchronises."""
    return name in ("torch", "tensorrt")



def score_backend(name: str, model: GuidedDenoiser, bundle: Bundle, device: torch.device,
                  cache_dir: str | Path | None = None, batches: tuple[int, ...] | None = None,
                  max_batch: int = 64, fp16: bool = False):
    """The denoiser of ``bundle`` as run by backend ``name``: ``model`` itself for torch, else the runtime
    over the artifacts ``build_artifacts`` makes (the same ones ``tapdiff export`` makes)."""
    if name not in BACKENDS:
        raise InvalidInput(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if fp16 and name != "tensorrt":
        raise InvalidInput(f"fp16 is a TensorRT plan precision; the {name} backend runs fp32")
    if name == "torch":
        return model
    graphs, plans = build_artifacts(name, model, bundle, device, cache_dir, batches, max_batch, fp16)
    if name == "onnxruntime":
        from .runtimes.ort import OrtScoreModel

        return OrtScoreModel(graphs, device=str(device))
    from .runtimes.trt import TrtScoreModel, read_manifest

    return TrtScoreModel(plans, {k: read_manifest(p) for k, p in graphs.items()}, str(device), max_batch)


def plan_profile(batch: int | None, max_batch: int) -> tuple[int, int, int] | None:
    """The TensorRT optimisation profile of a graph: none for a static batch, (1, max_batch, max_batch) for a
    dynamic one. The one place export and runtime derive it, so the plan ``tapdiff export`` builds is the
    plan the Engine loads."""
    return None if batch is not None else (1, max_batch, max_batch)


def build_artifacts(name: str, model: GuidedDenoiser, bundle: Bundle, device: torch.device,
                    cache_dir: str | Path | None = None, batches: tuple[int, ...] | None = None,
                    max_batch: int = 64, fp16: bool = False):
    """(graphs, plans) that backend ``name`` runs, from the cache or built there: ONNX graphs exported from a
    CPU copy of ``model`` (with CPU example inputs, whatever device ``model`` is on), and for tensorrt the
    plans built from them on ``device``."""
    if name == "tensorrt" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise BackendError("the tensorrt backend needs an NVIDIA GPU: run with device='cuda' on a machine with one "
                           "(this machine has none visible to torch)")
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # export's parity check and the onnxruntime backend both need them
        raise MissingDependency(f"the {name} backend needs {' and '.join(missing)} (pip install onnx onnxruntime)")
    from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs

    on_cpu = model if _on_cpu(model) else copy.deepcopy(model).cpu()
    spec = GraphSpec.of(bundle, on_cpu, batches)
    graphs = ensure_score_graphs(on_cpu, bundle, spec, cache_dir or default_cache_dir())
    if name != "tensorrt":
        return graphs, {}
    from export.tensorrt_build import cached_engine
    from export.trt_ops import check_onnx_for_tensorrt, load_support_matrix

    matrix = load_support_matrix()
    for path in graphs.values():
        report = check_onnx_for_tensorrt(path, matrix)
        if not report.ok:
            raise BackendError(f"{path.name} cannot be built by TensorRT's ONNX parser: operators "
                               f"{report.unsupported} unsupported, opset {report.opset} (supported "
                               f"{matrix.opset_range[0]}-{matrix.opset_range[1]})")
    plans = {key: cached_engine(path, path.parent / "trt", plan_profile(key[1], max_batch), fp16, device=str(device))
             for key, path in graphs.items()}
    return graphs, plans


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers()))


def export_artifacts(checkpoint, model_name: str | None, cache_dir=None, max_batch: int = 16, fp16: bool = False,
                     device: str = "cuda") -> list[Path]:
    """What ``tapdiff export`` builds: the artifacts an ``Engine(checkpoint, model=model_name,
    batch_size=max_batch)`` loads, graphs always, TensorRT plans where TensorRT and a GPU are (else a logged
    warning says why not); ``model_name`` None: the checkpoint's default model. Returns their paths."""
    from .bundle import default_model, load_bundle
    from .diffusion.score_model import score_model
    from .storage.checkpoint import read_config

    bundle = load_bundle(checkpoint, model=model_name or default_model(read_config(checkpoint)))
    model = score_model(bundle)
    reason = None
    if importlib.util.find_spec("tensorrt") is None:
        reason = "TensorRT is not installed (see pyproject's notes)"
    elif not torch.cuda.is_available():
        reason = "no NVIDIA GPU is visible to torch"
    if reason is not None:
        if fp16:
            raise BackendError(f"--fp16 asks for TensorRT plans, which cannot be built here: {reason}")
        logger.warning(f"no TensorRT plans built: {reason}")
        graphs, plans = build_artifacts("onnxruntime", model, bundle, torch.device("cpu"), cache_dir, None,
                                        max_batch, False)
    else:
        graphs, plans = build_artifacts("tensorrt", model, bundle, torch.device(device), cache_dir, None, max_batch,
                                        fp16)
    return [*graphs.values(), *plans.values()]
