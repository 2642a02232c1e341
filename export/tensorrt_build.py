"""TensorRT engine build from an exported ONNX graph (written against TensorRT's documented Python API).

TensorRT is imported lazily: it cannot be installed from the package registries this project reaches, and
the engine build needs an NVIDIA GPU. What runs without it: deriving the optimisation profiles from an
export manifest, and the cache key that decides when a cached engine is stale. Never built here: no
TensorRT, no GPU on this project's machines.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.backends import BackendError
from engine.storage.atomic import atomic_write_bytes

Shape = tuple[int, ...]


def optimization_profile(manifest: dict, batch: tuple[int, int, int] | None = None) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes per input for a TensorRT optimisation profile.

    Inputs exported with static shapes get min = opt = max = their shape. Inputs whose axis 0 was exported
    as dynamic need ``batch`` = (min, opt, max); other dynamic axes are not supported here.
    """
    profile = {}
    dynamic = manifest.get("dynamic_axes", {})
    for inp in manifest["inputs"]:
        shape = tuple(inp["shape"])
        axes = {int(a) for a in dynamic.get(inp["name"], {})}
        if not axes:
            profile[inp["name"]] = (shape, shape, shape)
            continue
        if axes != {0}:
            raise ValueError(f"input {inp['name']}: only a dynamic batch axis is supported, got axes {sorted(axes)}")
        if batch is None or not (1 <= batch[0] <= batch[1] <= batch[2]):
            raise ValueError(f"input {inp['name']} has a dynamic batch axis: give batch=(min, opt, max), got {batch}")
        profile[inp["name"]] = tuple((b, *shape[1:]) for b in batch)
    return profile


def engine_cache_key(onnx_path: str | os.PathLike, profile: dict, fp16: bool, trt_version: str, device_name: str) -> str:
    """Everything an engine depends on: the graph's bytes, the profile, precision, TensorRT and the GPU."""
    h = hashlib.sha256(Path(onnx_path).read_bytes())
    h.update(json.dumps({k: [list(s) for s in v] for k, v in sorted(profile.items())}).encode())
    h.update(f"fp16={fp16}|trt={trt_version}|gpu={device_name}".encode())
    return h.hexdigest()[:32]


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError("TensorRT is not installed. It is not on PyPI in a usable form (its -libs wheels download "
                          "from NVIDIA's index): install it per NVIDIA's instructions on a machine with an NVIDIA GPU.") from e
    return trt


def keep_fp32(trt, network) -> int:
    """With fp16 on, pin the layers whose arithmetic fp16 ruins to fp32: softmax (the cotangents
    softmax(logits) are differences of probabilities) and reductions (the tap RMS over ~10^5 elements,
    GroupNorm statistics); the gradient taps are ~1e-4 of feature scale. Returns how many were pinned."""
    pinned = 0
    kinds = {trt.LayerType.SOFTMAX, trt.LayerType.REDUCE, trt.LayerType.NORMALIZATION}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, profile: dict, fp16: bool = False,
                 workspace_bytes: int = 2 << 30, timing_cache: str | os.PathLike | None = None) -> Path:
    """Parse the ONNX graph, build a serialised engine with one optimisation profile, write it atomically.
    ``timing_cache``: a file of kernel timings shared by builds on the same GPU (read if present, then
    written back), which makes later builds fast."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep_fp32(trt, network)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt_profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in profile.items():
        opt_profile.set_shape(name, mn, opt, mx)
    config.add_optimization_profile(opt_profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT engine build failed for {onnx_path} (see TensorRT's log above)")
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return atomic_write_bytes(engine_path, bytes(blob))


def cached_engine(onnx_path: str | os.PathLike, cache_dir: str | os.PathLike, batch: tuple[int, int, int] | None = None,
                  fp16: bool = False) -> Path:
    """The engine for ``onnx_path`` (its manifest beside it), built once per cache key; a stale engine is
    never reused because the key covers everything it depends on."""
    import torch

    trt = _tensorrt()
    if not torch.cuda.is_available():
        raise BackendError("building a TensorRT engine needs an NVIDIA GPU visible to torch")
    manifest = json.loads(Path(onnx_path).with_suffix(".json").read_text())
    profile = optimization_profile(manifest, batch)
    key = engine_cache_key(onnx_path, profile, fp16, trt.__version__, torch.cuda.get_device_name())
    path = Path(cache_dir) / f"{Path(onnx_path).stem}-{key}.plan"
    timing = Path(cache_dir) / f"timing-{trt.__version__}-{torch.cuda.get_device_name().replace(' ', '_')}.cache"
    if plan_is_intact(path):
        return path
    if path.exists():
        print(f"tapdiff: rebuilding {path}: its bytes differ from the sha256 recorded when it was built")
    build_engine(onnx_path, path, profile, fp16, timing_cache=timing)
    atomic_write_bytes(path.with_suffix(".sha256"), hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return path


def plan_is_intact(path: Path) -> bool:
    """A plan exists and its bytes match the sha256 written beside it after its build (a truncated or
    half-written plan is rebuilt, not deserialised)."""
    sidecar = path.with_suffix(".sha256")
    return (path.exists() and sidecar.exists()
            and hashlib.sha256(path.read_bytes()).hexdigest() == sidecar.read_text().strip())
