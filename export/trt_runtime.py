"""TensorRT plans of the exported score graphs behind the engine's score-model interface
``model(x, sigma[, onehot, gamma]) -> denoised``: device buffers bound by tensor name, run on torch's
current CUDA stream (so the captured solver step can hold the enqueue).

Written against TensorRT 10's documented Python API (``Runtime.deserialize_cuda_engine``,
``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) and imported
lazily; it has never run: this project's machines have neither TensorRT nor a GPU. What runs without them,
and is tested on CPU: choosing the graph and profile for a batch (``select_graph``) and checking the
buffers to bind against the export manifest (``binding_plan``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.backends import BackendError

from .tensorrt_build import _tensorrt


def select_graph(available: list[tuple[bool, int | None]], guided: bool, batch: int,
                 max_batch: int | None = None) -> tuple[bool, int | None]:
    """The graph for ``batch``: a static one of exactly that size, else the dynamic one (whose profile
    must cover ``batch``)."""
    if (guided, batch) in available:
        return guided, batch
    if (guided, None) in available:
        if max_batch is not None and batch > max_batch:
            raise ValueError(f"batch {batch} is above the dynamic profile's maximum {max_batch}; rebuild the plan "
                             "with a larger --batch")
        return guided, None
    have = sorted(b for g, b in available if g == guided and b is not None)
    raise ValueError(f"no {'guided' if guided else 'unguided'} plan for batch {batch} (static sizes {have})")


def binding_plan(manifest: dict, feeds: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every input to bind, checked against the manifest: the same names, and shapes that
    agree with the exported ones on every axis but a dynamic batch axis."""
    inputs = {i["name"]: i for i in manifest["inputs"]}
    if set(feeds) != set(inputs):
        raise ValueError(f"inputs {sorted(feeds)} do not match the graph's {sorted(inputs)}")
    dynamic = manifest.get("dynamic_axes", {})
    plan, batch = [], None
    for name, t in feeds.items():
        want = inputs[name]["shape"]
        axes = {int(a) for a in dynamic.get(name, {})}
        if len(t.shape) != len(want) or any(d != w for i, (d, w) in enumerate(zip(t.shape, want)) if i not in axes):
            raise ValueError(f"input {name}: shape {tuple(t.shape)} does not fit the exported {tuple(want)} "
                             f"(dynamic axes {sorted(axes)})")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"input {name} has batch {t.shape[0]}, others {batch}")
        batch = t.shape[0]
        plan.append((name, tuple(t.shape)))
    return plan


class TrtScoreModel:
    def __init__(self, plans: dict[tuple[bool, int | None], Path], manifests: dict[tuple[bool, int | None], dict],
                 device: str = "cuda", max_batch: int | None = None):
        trt = _tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs an NVIDIA GPU visible to torch (device='cuda')")
        self.manifests, self.max_batch = manifests, max_batch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        for key, plan in plans.items():
            engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {plan} (corrupt, or built by another TensorRT/GPU)")
            self.engines[key], self.contexts[key] = engine, engine.create_execution_context()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None,
                 gamma: torch.Tensor | None = None) -> torch.Tensor:
        guided = onehot is not None
        key = select_graph(list(self.engines), guided, x.shape[0], self.max_batch)
        feeds = dict(zip(("x_t", "sigma", "onehot", "gamma"), (x, sigma, onehot, gamma) if guided else (x, sigma)))
        feeds = {k: v.contiguous().float() for k, v in feeds.items()}
        ctx = self.contexts[key]
        for name, shape in binding_plan(self.manifests[key], feeds):
            ctx.set_input_shape(name, shape)
            ctx.set_tensor_address(name, feeds[name].data_ptr())
        out = torch.empty(tuple(ctx.get_tensor_shape("denoised")), device=self.device)
        ctx.set_tensor_address("denoised", out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log)")
        return out


def read_manifest(onnx_path: Path) -> dict:
    return json.loads(Path(onnx_path).with_suffix(".json").read_text())
