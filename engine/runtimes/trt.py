"""TensorRT plans of the exported score graphs behind the engine's score-model interface
``model(x, sigma[, onehot, gamma]) -> denoised``: device buffers bound by tensor name, run on torch's
current CUDA stream of the model's device (so a CUDA-graph capture of the solver step holds the enqueue).

Written for TensorRT 10 and 11 (``Runtime.deserialize_cuda_engine``, ``IExecutionContext.set_input_shape``
/ ``set_tensor_address`` / ``execute_async_v3``; names checked against both versions' bindings by
``tests/test_tensorrt_names.py``) and imported lazily. It has never run: this project's machines have
neither TensorRT nor a GPU. What runs without them, and is tested on CPU: choosing the graph and profile for
a batch (``select_graph``), checking the buffers to bind against the export manifest (``binding_plan``),
and the feature-detected memory query (``engine_device_memory``, on stand-in objects).

Threads: one ``IExecutionContext`` per calling thread and graph (``TrtScoreModel``'s docstring says why a
lock would not do).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import BackendError, InvalidInput
from export.tensorrt_build import _tensorrt, shared_logger

from .selection import select_graph

if TYPE_CHECKING:  # annotations only: the module is imported lazily, by _tensorrt()
    import tensorrt as trt

# TensorRT names that one of the checked versions (10.13.3.9, 11.4.0.106) lacks, and how each use is guarded
# (see export.tensorrt_build.VERSION_SPECIFIC; checked by tests/test_tensorrt_names.py).
VERSION_SPECIFIC = {
    "device_memory_size": "getattr",  # ICudaEngine.device_memory_size: 10 only (11 has device_memory_size_v2)
}


def binding_plan(manifest: dict, feeds: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every input to bind, checked against the manifest: the same names, and shapes that
    agree with the exported ones on every axis but a dynamic batch axis."""
    inputs = {i["name"]: i for i in manifest["inputs"]}
    if set(feeds) != set(inputs):
        raise InvalidInput(f"inputs {sorted(feeds)} do not match the graph's {sorted(inputs)}")
    dynamic = manifest.get("dynamic_axes", {})
    plan, batch = [], None
    for name, t in feeds.items():
        want = inputs[name]["shape"]
        axes = {int(a) for a in dynamic.get(name, {})}
        if len(t.shape) != len(want) or any(d != w for i, (d, w) in enumerate(zip(t.shape, want)) if i not in axes):
            raise InvalidInput(f"input {name}: shape {tuple(t.shape)} does not fit the exported {tuple(want)} "
                               f"(dynamic axes {sorted(axes)})")
        if batch is not None and t.shape[0] != batch:
            raise InvalidInput(f"input {name} has batch {t.shape[0]}, others {batch}")
        batch = t.shape[0]
        plan.append((name, tuple(t.shape)))
    return plan


def engine_device_memory(engine: trt.ICudaEngine) -> int | None:
    """Bytes of device memory one execution context of ``engine`` allocates for its activations and scratch
    (not the engine's weights, which the engine holds once: about the plan's size). TensorRT 11 and 10.1+:
    ``device_memory_size_v2`` (which counts weight-streaming scratch too); TensorRT 10.0: only
    ``device_memory_size``. None when this TensorRT has neither."""
    size = getattr(engine, "device_memory_size_v2", None)
    if size is None:
        size = getattr(engine, "device_memory_size", None)
    return None if size is None else int(size)


def check_float32_io(trt, engine: trt.ICudaEngine, plan) -> None:
    """The engine's inputs and output are fp32, as the buffers bound here are (an fp16 plan keeps the
    graph's fp32 I/O under weak typing; anything else is a plan this runtime does not know how to feed)."""
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_dtype(name) != trt.float32:
            raise BackendError(f"{plan}: tensor {name} is {engine.get_tensor_dtype(name)}, expected fp32")


class _ThreadContext:
    """One thread's execution context of one engine; holds the engine so that it outlives the context."""

    def __init__(self, engine: trt.ICudaEngine, context: trt.IExecutionContext):
        self.engine, self.context = engine, context

    def __del__(self):
        self.context = None  # the context goes before its engine


class _ThreadContexts(threading.local):
    def __init__(self):
        self.by_key: dict[tuple[bool, int | None], _ThreadContext] = {}


class TrtScoreModel:
    """The score model as TensorRT plans, one per exported graph (guided / unguided, static batch sizes or a
    dynamic one).

    Threads: an execution context holds the activation memory of the work it enqueued, so two calls must
    never run on one context at the same time, on any stream. A lock around bind + enqueue would not do:
    the GPU work of two enqueues on different streams (a thread's CUDA-graph warm-up runs on a side stream)
    or of two threads' captured graphs, which each hold the context's memory, would still overlap in it.
    So each calling thread gets its own context per graph, created on its first call there (the sampler's
    warm-up steps, before any capture: a context cannot be created during a capture) and dropped with the
    thread. TensorRT documents creating contexts and running different contexts of one engine from several
    threads as safe. Cost: each thread holds ``device_memory()[key]`` bytes for each graph it ran. Not
    verified (no GPU here): that a context dropped with its thread frees its memory only after the work it
    enqueued has finished; a thread that ends right after a call should synchronise its stream first.

    Device: everything (deserialisation, context creation, binding, enqueue) runs under
    ``torch.cuda.device(self.device)``, so ``cuda:1`` works when another device is current; inputs must
    already be on that device.
    """

    def __init__(self, plans: dict[tuple[bool, int | None], Path], manifests: dict[tuple[bool, int | None], dict],
                 device: str = "cuda", max_batch: int | None = None):
        trt = _tensorrt()
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs an NVIDIA GPU visible to torch (device='cuda')")
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        self.manifests, self.max_batch = manifests, max_batch
        self.engines = {}
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(shared_logger(trt))  # kept: engines must not outlive their runtime
            for key, plan in plans.items():
                engine = self._runtime.deserialize_cuda_engine(Path(plan).read_bytes())
                if engine is None:
                    raise BackendError(f"TensorRT could not deserialise {plan} (corrupt, or built by another TensorRT/GPU)")
                check_float32_io(trt, engine, plan)
                self.engines[key] = engine
        self._threads = _ThreadContexts()

    def device_memory(self) -> dict[tuple[bool, int | None], int | None]:
        """Per graph: the device memory one execution context allocates (``engine_device_memory``); every
        thread that ran a graph holds one such context."""
        return {key: engine_device_memory(engine) for key, engine in self.engines.items()}

    def _context(self, key) -> trt.IExecutionContext:
        bound = self._threads.by_key.get(key)
        if bound is None:
            engine = self.engines[key]
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(f"TensorRT could not create an execution context for graph {key} (out of device "
                                   f"memory? it needs {engine_device_memory(engine)} bytes)")
            bound = self._threads.by_key[key] = _ThreadContext(engine, context)
        return bound.context

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None,
                 gamma: torch.Tensor | None = None) -> torch.Tensor:
        guided = onehot is not None
        key = select_graph(list(self.engines), guided, x.shape[0], self.max_batch)
        feeds = dict(zip(("x_t", "sigma", "onehot", "gamma"), (x, sigma, onehot, gamma) if guided else (x, sigma)))
        feeds = {k: v.contiguous().float() for k, v in feeds.items()}
        wrong = {k: str(v.device) for k, v in feeds.items() if v.device != self.device}
        if wrong:
            raise InvalidInput(f"inputs must be on {self.device}, got {wrong}")
        with torch.cuda.device(self.device):
            ctx = self._context(key)
            for name, shape in binding_plan(self.manifests[key], feeds):
                if not ctx.set_input_shape(name, shape):
                    raise InvalidInput(f"input {name}: shape {shape} is outside the plan's optimisation profile")
                ctx.set_tensor_address(name, feeds[name].data_ptr())
            out = torch.empty(tuple(ctx.get_tensor_shape("denoised")), device=self.device)
            ctx.set_tensor_address("denoised", out.data_ptr())
            if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise BackendError("TensorRT execution failed (see its log)")
        return out


def read_manifest(onnx_path: Path) -> dict:
    return json.loads(Path(onnx_path).with_suffix(".json").read_text())
