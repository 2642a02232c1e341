"""The exported score graphs run by onnxruntime, behind the engine's score-model interface
``model(x, sigma[, onehot, gamma]) -> denoised``, so the solvers cannot tell it from eager PyTorch.

- CPU (``CPUExecutionProvider``): numpy views of the tensors in, a tensor view of the result out.
- CUDA (``CUDAExecutionProvider``, ``TensorrtExecutionProvider`` of onnxruntime-gpu): IOBinding on the
  torch tensors' device memory, synchronised with torch's stream on both sides, so never inside a CUDA
  graph; never run on a GPU: onnxruntime-gpu cannot be installed on this project's machines.

onnxruntime-gpu falls back to the CPU provider silently when CUDA is missing: every session's
``get_providers()`` is checked against what was asked, and a mismatch is an error, never a slow success.
Thread spinning is off: a spinning intra-op pool slows the PyTorch code that shares the process.
Sessions save their optimised graph beside the exported one (keyed by onnxruntime's version, the
provider and the settings; written atomically with its sha256 beside it), and later sessions load it with
optimisation off, so they start fast; one that fails its hash or does not load is rebuilt with a logged
warning saying why.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import BackendError, InvalidInput, MissingDependency
from engine.provenance import cpu_model
from engine.storage.atomic import atomic_write_bytes
from export.onnx_export import IDENTITY_KEY, graph_identity
from engine.storage.hashing import file_sha256, sidecar_of, sidecar_problem

from .selection import select_graph

logger = logging.getLogger(__name__)

# Chosen by measurement (benchmarks/ort_settings.py, benchmarks/results/ort_settings.md).
DEFAULT_LEVEL = "all"
LEVELS = ("disable", "basic", "extended", "all")
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}


def _onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependency("the onnxruntime backend needs onnxruntime (CPU) or onnxruntime-gpu: "
                                "pip install onnxruntime (a dependency of tapdiff), or onnxruntime-gpu in its place on a GPU machine") from e
    return ort


def session_options(threads: int, level: str, optimized_path: Path | None = None):
    ort = _onnxruntime()
    if level not in LEVELS:
        raise InvalidInput(f"unknown graph optimisation level {level!r}; expected one of {LEVELS}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the NCHWc note on saving is why the optimised graph is keyed by CPU
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def provider_saves_graph(provider: str) -> bool:
    """Whether a session on ``provider`` can save its optimised graph (TensorRT's compiled nodes cannot be)."""
    return provider != "tensorrt"


def saved_graph_problem(optimized: Path) -> str | None:
    """Why the saved optimised graph at ``optimized`` cannot be used (None: it can; "missing" when absent)."""
    return sidecar_problem(optimized)


def checked_session(path: Path, so, providers: list):
    """An InferenceSession whose providers are the ones asked for (the first one at least)."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    if wanted[0] not in available:
        raise BackendError(f"onnxruntime has no {wanted[0]} here (available: {available}); "
                           f"{'install onnxruntime-gpu on a machine with CUDA' if wanted[0] != 'CPUExecutionProvider' else ''}")
    sess = ort.InferenceSession(str(path), so, providers=providers)
    if sess.get_providers()[0] != wanted[0]:
        raise BackendError(f"onnxruntime fell back to {sess.get_providers()} although {wanted[0]} was asked for")
    return sess


class OrtScoreModel:
    """The score model as onnxruntime sessions: one per (guided, static batch or None = dynamic) graph."""

    def __init__(self, graphs: dict[tuple[bool, int | None], Path], device: str = "cpu", provider: str | None = None,
                 threads: int | None = None, level: str = DEFAULT_LEVEL):
        """``threads``: intra-op threads, default torch's (both runtimes then use the same cores)."""
        ort = _onnxruntime()
        self.device = torch.device(device)
        provider = provider or ("cuda" if self.device.type == "cuda" else "cpu")
        if provider not in PROVIDERS:
            raise InvalidInput(f"unknown onnxruntime provider {provider!r}; expected one of {sorted(PROVIDERS)}")
        if (provider == "cpu") != (self.device.type == "cpu"):
            raise InvalidInput(f"provider {provider!r} does not run on device {self.device}")
        providers: list = list(PROVIDERS[provider])
        if provider != "cpu":
            # onnxruntime computes on a stream of its own (a "user_compute_stream" of "0", torch's default
            # stream, counts as unset): _run_on_device orders it with torch's by synchronising (see there)
            providers = [(p, {"device_id": self.device.index or 0}) for p in providers]
        threads = threads or torch.get_num_threads()
        self.provider, self.sessions = provider, {}
        # optimised graphs can hold layouts for this very processor: its model is part of the key
        settings = f"{ort.__version__}|{provider}|{threads}|{level}|{cpu_model()}"
        for key, path in graphs.items():
            self.sessions[key] = self._session(path, settings, threads, level, providers)

    def _session(self, path: Path, settings: str, threads: int, level: str, providers: list):
        """A session of ``path``: from its saved optimised graph when that is intact, else optimising ``path``
        and saving the result (written to a temporary file, hashed, then moved into place with its sha256
        beside it). A saved graph that is truncated, altered, unhashed or unloadable is rebuilt with one line
        saying why. TensorRT's provider compiles nodes that cannot be saved: its graphs are never saved."""
        if not provider_saves_graph(self.provider):
            return checked_session(path, session_options(threads, level), providers)
        optimized = self._optimized_path(path, settings)
        reason = saved_graph_problem(optimized)
        if reason is None:
            try:
                sess = checked_session(optimized, session_options(threads, "disable"), providers)
                held = sess.get_modelmeta().custom_metadata_map.get(IDENTITY_KEY)
                if held == graph_identity(path):
                    return sess
                reason = f"it holds another graph (stamped {held!r}): copied over this one"
            except BackendError:
                raise
            except Exception as e:  # noqa: BLE001 - onnxruntime's own error types (InvalidGraph, Fail, ...)
                reason = f"onnxruntime cannot load it ({type(e).__name__}: {str(e)[:200]})"
        if optimized.exists() or sidecar_of(optimized).exists():
            logger.warning(f"rebuilding {optimized}: {reason}")
        optimized.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=optimized.parent, prefix=f".{optimized.stem}.", suffix=".onnx")
        os.close(fd)
        try:
            sess = checked_session(path, session_options(threads, level, Path(tmp)), providers)
            if os.path.getsize(tmp) > 0:  # onnxruntime wrote the optimised graph: hash it, then publish both
                digest = file_sha256(tmp)
                os.replace(tmp, optimized)
                atomic_write_bytes(sidecar_of(optimized), digest.encode())
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return sess

    @staticmethod
    def _optimized_path(path: Path, settings: str) -> Path:
        """The optimised graph of ``path`` under these settings: keyed by the source graph's bytes too, so a
        rebuilt graph never meets an old optimised one."""
        key = hashlib.sha256(f"{file_sha256(path)}|{settings}".encode()).hexdigest()[:16]
        return path.parent / "ort" / f"{path.stem}-{key}.onnx"

    def providers(self) -> list[str]:
        return sorted({p for s in self.sessions.values() for p in s.get_providers()})

    def session_for(self, guided: bool, batch: int):
        return self.sessions[select_graph(list(self.sessions), guided, batch)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, onehot: torch.Tensor | None = None,
                 gamma: torch.Tensor | None = None) -> torch.Tensor:
        guided = onehot is not None
        feeds = dict(zip(("x_t", "sigma", "onehot", "gamma"), (x, sigma, onehot, gamma) if guided else (x, sigma)))
        sess = self.session_for(guided, x.shape[0])
        if self.provider == "cpu":
            out = sess.run(None, {k: np.ascontiguousarray(v.detach().numpy()) for k, v in feeds.items()})[0]
            return torch.from_numpy(out)
        return self._run_on_device(sess, feeds, x)

    def _run_on_device(self, sess, feeds: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """IOBinding on device memory: inputs and output stay on the GPU, no host copies."""
        binding = sess.io_binding()
        index = self.device.index or 0
        keep = []
        for name, t in feeds.items():
            t = t.contiguous().float()
            keep.append(t)
            binding.bind_input(name, "cuda", index, np.float32, list(t.shape), t.data_ptr())
        out = torch.empty_like(keep[0])
        binding.bind_output("denoised", "cuda", index, np.float32, list(out.shape), out.data_ptr())
        # The inputs were written on torch's stream, onnxruntime reads on its own: wait for torch's work first.
        # run_with_iobinding synchronises onnxruntime's stream before it returns, so torch may read `out` next.
        # Being synchronous, this runner is never captured in a CUDA graph (engine.backends.can_capture_backend).
        torch.cuda.current_stream(self.device).synchronize()
        sess.run_with_iobinding(binding)
        return out
