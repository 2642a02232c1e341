"""TensorRT engine build from an exported ONNX graph, for TensorRT 10 and 11.

TensorRT is imported lazily: it cannot be installed from the package registries this project reaches, and
the engine build needs an NVIDIA GPU. What runs without it, and is tested on CPU: the optimisation profiles
from an export manifest, the cache key that decides when a cached engine is stale, the plan integrity check
(sha256 sidecar), and a check that every TensorRT name used here exists in the real bindings of TensorRT
10.13.3.9 and 11.4.0.106 or sits behind a feature test (``tests/test_tensorrt_names.py``, against name lists
read from the bindings wheels by ``export.tensorrt_names``). What has never run: any of the TensorRT calls
below; this project's machines have neither TensorRT nor a GPU.

Versions, told apart by feature tests on the module, never by version strings:

- fp16 plans use weak typing (``BuilderFlag.FP16`` + ``OBEY_PRECISION_CONSTRAINTS`` and fp32 pinning of
  softmax, reductions and normalisation). TensorRT 11 removed weak typing (it is strongly typed only), so
  there an fp16 build is refused with a ``BackendError`` naming the way out (fp32 plan, or TensorRT 10).
  The strongly typed alternative, an fp16-typed ONNX graph with fp32 casts around softmax and reductions,
  is not implemented.
- ``create_network(0)`` on both (see ``create_network``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import BackendError, CheckpointError, InvalidInput, MissingDependency
from engine.storage.atomic import atomic_write_bytes
from engine.storage.hashing import file_sha256, sidecar_of, sidecar_problem
from engine.storage.safe_files import read_limited

if TYPE_CHECKING:  # annotations only: the module is imported lazily, by _tensorrt()
    import tensorrt as trt

logger = logging.getLogger(__name__)

# TensorRT names that one of the checked versions (10.13.3.9, 11.4.0.106) lacks, each with the feature test
# guarding every use: a function here (uses sit inside ``if guard(...)`` or after ``if not guard(...): raise``)
# or "getattr" (every use is itself ``getattr(obj, name, default)`` / ``hasattr``). tests/test_tensorrt_names.py
# checks this table against the source and the name lists, both ways.
VERSION_SPECIFIC = {
    "FP16": "weakly_typed",                        # BuilderFlag.FP16: 10 only
    "OBEY_PRECISION_CONSTRAINTS": "weakly_typed",  # BuilderFlag: 10 only
    "precision": "weakly_typed",                   # ILayer.precision: 10 only
    "set_output_type": "weakly_typed",             # ILayer.set_output_type: 10 only
}

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
            raise InvalidInput(f"input {inp['name']}: only a dynamic batch axis is supported, got axes {sorted(axes)}")
        if batch is None or not (1 <= batch[0] <= batch[1] <= batch[2]):
            raise InvalidInput(f"input {inp['name']} has a dynamic batch axis: give batch=(min, opt, max), got {batch}")
        profile[inp["name"]] = tuple((b, *shape[1:]) for b in batch)
    return profile


def engine_cache_key(onnx_path: str | os.PathLike, profile: dict, fp16: bool, trt_version: str, device_name: str) -> str:
    """Everything an engine depends on: the graph's bytes, the profile, precision, TensorRT and the GPU."""
    h = hashlib.sha256(file_sha256(onnx_path).encode())
    h.update(json.dumps({k: [list(s) for s in v] for k, v in sorted(profile.items())}).encode())
    h.update(f"fp16={fp16}|trt={trt_version}|gpu={device_name}".encode())
    return h.hexdigest()[:32]


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependency("TensorRT is not installed. It is not on PyPI in a usable form (its -libs wheels download "
                                "from NVIDIA's index): install it per NVIDIA's instructions on a machine with an NVIDIA GPU.") from e
    return trt


@functools.lru_cache(maxsize=None)
def shared_logger(trt) -> trt.Logger:
    """One logger for every builder and runtime: TensorRT keeps a single logger pointer per process."""
    return trt.Logger(trt.Logger.WARNING)


def weakly_typed(trt) -> bool:
    """Whether this TensorRT still has weak typing (builder-chosen precision: ``BuilderFlag.FP16``, per-layer
    ``precision`` / ``set_output_type``). TensorRT 10 has it; TensorRT 11 removed it (every network is
    strongly typed: precisions come from the graph's types)."""
    return hasattr(trt.BuilderFlag, "FP16")


def fp16_refusal(trt) -> str:
    return (f"fp16 TensorRT plans are built with weak typing (BuilderFlag.FP16, softmax, reductions and normalisation "
            f"pinned to fp32), which TensorRT {trt.__version__} does not have: it is strongly typed "
            "only and takes every precision from the ONNX graph, and tapdiff exports that graph in fp32. Build an "
            "fp32 plan (drop --fp16 / fp16=False), or use TensorRT 10.")


def check_precision(trt, fp16: bool) -> None:
    """Refuse, before any work, a precision this TensorRT cannot build (``BackendError`` saying why)."""
    if fp16 and not weakly_typed(trt):
        raise BackendError(fp16_refusal(trt))


def create_network(builder: trt.Builder) -> trt.INetworkDefinition:
    """An empty network. Flags 0 on both versions: TensorRT 10 makes it weakly typed (what the fp16 path
    needs; EXPLICIT_BATCH is deprecated there and gone in 11, explicit batch being the only mode), TensorRT 11
    strongly typed (its STRONGLY_TYPED flag is kept only for compatibility and ignored)."""
    return builder.create_network(0)


def keep_fp32(trt, network: trt.INetworkDefinition) -> int:
    """With fp16 on (weak typing, TensorRT 10), pin the layers whose arithmetic fp16 ruins to fp32: softmax
    (the cotangents softmax(logits) are differences of probabilities) and reductions (the tap RMS over ~10^5
    elements, GroupNorm statistics); the gradient taps are ~1e-4 of feature scale. Returns how many were
    pinned."""
    if not weakly_typed(trt):
        raise BackendError(fp16_refusal(trt))
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


def enable_fp16(trt, config: trt.IBuilderConfig, network: trt.INetworkDefinition) -> int:
    """TensorRT 10's weakly typed fp16: fp16 kernels allowed, the layers ``keep_fp32`` pins obeyed."""
    if not weakly_typed(trt):
        raise BackendError(fp16_refusal(trt))
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return keep_fp32(trt, network)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, profile: dict, fp16: bool = False,
                 workspace_bytes: int = 2 << 30, timing_cache: str | os.PathLike | None = None) -> Path:
    """Parse the ONNX graph, build a serialised engine with one optimisation profile, write it atomically.
    ``timing_cache``: a file of kernel timings shared by builds on the same GPU (read if present, then
    written back), which makes later builds fast. Builds on torch's current CUDA device."""
    trt = _tensorrt()
    check_precision(trt, fp16)
    logger = shared_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        enable_fp16(trt, config, network)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt_profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in profile.items():
        opt_profile.set_shape(name, mn, opt, mx)
    config.add_optimization_profile(opt_profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendError(f"TensorRT engine build failed for {onnx_path} (see TensorRT's log above)")
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return atomic_write_bytes(engine_path, bytes(blob))


def cached_engine(onnx_path: str | os.PathLike, cache_dir: str | os.PathLike, batch: tuple[int, int, int] | None = None,
                  fp16: bool = False, device: str | None = None) -> Path:
    """The engine for ``onnx_path`` (its manifest beside it), built once per cache key on ``device`` (a
    torch CUDA device; None: the current one); a stale engine is never reused because the key covers
    everything it depends on, and a plan that fails its sha256 check is rebuilt (a logged warning says
    why). The plan and then its sidecar are each written atomically, the sidecar last: a build interrupted
    in between leaves a plan without a matching sidecar, which the next call rebuilds."""
    import torch

    trt = _tensorrt()
    check_precision(trt, fp16)
    if not torch.cuda.is_available():
        raise BackendError("building a TensorRT engine needs an NVIDIA GPU visible to torch")
    with torch.cuda.device(torch.device("cuda") if device is None else torch.device(device)):
        gpu = torch.cuda.get_device_name()
        manifest = json.loads(Path(onnx_path).with_suffix(".json").read_text())
        profile = optimization_profile(manifest, batch)
        key = engine_cache_key(onnx_path, profile, fp16, trt.__version__, gpu)
        path = Path(cache_dir) / f"{Path(onnx_path).stem}-{key}.plan"
        timing = Path(cache_dir) / f"timing-{trt.__version__}-{gpu.replace(' ', '_')}.cache"
        problem = plan_problem(path, key)
        if problem is None:
            return path
        if path.exists():
            logger.warning(f"rebuilding {path}: {problem}")
        else:
            logger.info(f"building the TensorRT plan {path.name} in {cache_dir} (once: later runs load it)")
        build_engine(onnx_path, path, profile, fp16, timing_cache=timing)
        atomic_write_bytes(identity_path(path), key.encode())
        atomic_write_bytes(sidecar_path(path), file_sha256(path).encode())
    return path


def sidecar_path(plan: Path) -> Path:
    return sidecar_of(plan)


def identity_path(plan: Path) -> Path:
    """Beside a plan, the cache key it was built for (``engine_cache_key``: its graph, profile, precision,
    TensorRT and GPU)."""
    return Path(plan).with_suffix(".key")


def plan_problem(path: str | os.PathLike, key: str | None = None) -> str | None:
    """Why the plan at ``path`` must not be deserialised, or None when its bytes match the sha256 written
    beside it after its build (a truncated or half-written plan, or one whose build was interrupted before
    its sidecar was written, is rebuilt) and, given ``key``, it was built for that cache key (a plan copied
    over another's name, its sidecar with it, is rebuilt)."""
    problem = sidecar_problem(path)
    if problem is not None:
        return "no plan" if problem == "missing" else problem
    if key is not None:
        try:
            built_for = read_limited(identity_path(path), 256).decode("ascii").strip()
        except (OSError, UnicodeDecodeError, CheckpointError) as e:
            return f"its cache key {identity_path(path).name} is unreadable ({e})"
        if built_for != key:
            return f"it was built for another graph or setting (cache key {built_for[:32]!r}, not {key!r})"
    return None


def plan_is_intact(path: Path) -> bool:
    """A plan exists and its bytes match the sha256 written beside it after its build."""
    return plan_problem(path) is None
