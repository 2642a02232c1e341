"""ONNX export as a build step: artifact + manifest + immediate parity check on onnxruntime.

``export_onnx`` writes ``NAME.onnx`` and ``NAME.json`` (input/output names, shapes, dtypes, opset, the
source weights' sha256, the parity numbers), after checking onnxruntime's output against eager PyTorch on
fresh inputs. ``ort_session`` opens a session and reports which execution provider it really got:
onnxruntime-gpu silently falls back to the CPU provider when CUDA is missing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from engine.errors import BackendError
from engine.storage.atomic import atomic_write_bytes, make_folder
from engine.storage.hashing import file_sha256

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def weights_sha256(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ort_session(path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime session; raises if none of the requested providers is actually in use."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=list(providers))
    used = sess.get_providers()
    if not set(used) & set(providers):
        raise BackendError(f"onnxruntime gave providers {used}, none of the requested {list(providers)}")
    return sess


IDENTITY_KEY = "tapdiff_identity"


def stamp_identity(path: str | os.PathLike, identity: str) -> None:
    import onnx

    model = onnx.load(str(path))
    model.metadata_props.append(onnx.StringStringEntryProto(key=IDENTITY_KEY, value=identity))
    onnx.save(model, str(path))


def graph_identity(path: str | os.PathLike) -> str | None:
    """The identity stamped into the ONNX graph at ``path`` (None: none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == IDENTITY_KEY), None)


def traced_silently(name: str, trace: Callable[[], object]) -> None:
    """Run ``trace`` (a TorchScript trace, such as the legacy ONNX exporter's) without its TracerWarnings: each
    says a Python value was traced as a constant, which the parity check after the export catches where it
    matters. One debug line counts them instead; every other warning the filters let through is shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        trace()
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        logger.debug(f"{name}: {len(tracer)} TracerWarning(s) silenced (Python values traced as constants), "
                     f"the first: {str(tracer[0].message).split('. ')[0][:200]}")
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], out_dir: str | os.PathLike, name: str,
                input_names: list[str], output_names: list[str], fresh: Callable[[], tuple[torch.Tensor, ...]],
                dynamic_axes: dict | None = None, opset: int = DEFAULT_OPSET, rtol: float = 1e-4,
                extra: dict | None = None, identity: str | None = None) -> Path:
    """Export ``module`` traced on ``example``, check it on ``fresh()`` inputs, write artifact + manifest
    (``extra`` entries are added to the manifest; the artifact's own sha256 is recorded as ``onnx_sha256``).
    ``identity`` is stamped into the graph itself (``IDENTITY_KEY`` in its metadata, which onnxruntime keeps in the
    optimised graphs it saves), so a graph copied over another's, manifest and all, is told apart on load.

    The legacy TorchScript-based exporter is used (dynamo=False): the torch.export-based one needs
    onnxscript, which this project does not depend on. Raises if the parity check fails; nothing is left
    behind then.
    """
    out_dir = make_folder(out_dir)
    module = module.eval()
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".onnx")
    os.close(fd)
    try:
        with torch.no_grad():
            traced_silently(name, lambda: torch.onnx.export(
                module, example, tmp, dynamo=False, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_axes=dynamic_axes or {}))
            if identity is not None:
                stamp_identity(tmp, identity)
            inputs = fresh()
            ref = module(*inputs)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        sess = ort_session(tmp)
        graph_inputs = {i.name for i in sess.get_inputs()}  # the exporter drops inputs the graph never reads
        got = sess.run(None, {n: t.numpy() for n, t in zip(input_names, inputs) if n in graph_inputs})
        errors = {}
        for n, r, g in zip(output_names, ref, got):
            err = float((torch.from_numpy(g) - r).abs().max()) if r.numel() else 0.0
            scale = float(r.abs().max()) if r.numel() else 0.0
            errors[n] = {"max_abs": err, "max_ref": scale}
            # Relative to each output's own scale: gradient taps are ~1e-4 where features are ~1.
            if not err <= rtol * scale + 1e-12:
                raise AssertionError(f"ONNX parity failed for output {n}: max |ORT - eager| = {err:.3g} (ref scale {scale:.3g})")
        manifest = {
            "name": name, "opset": opset, "torch": torch.__version__, "weights_sha256": weights_sha256(module),
            "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype)}
                       for n, t in zip(input_names, example) if n in graph_inputs],
            "outputs": [{"name": n, "shape": list(r.shape), "dtype": str(r.dtype)} for n, r in zip(output_names, ref)],
            "dynamic_axes": dynamic_axes or {}, "parity": {"provider": sess.get_providers()[0], "errors": errors},
            "onnx_sha256": file_sha256(tmp), **(extra or {}),
        }
        os.replace(tmp, out_dir / f"{name}.onnx")
        atomic_write_bytes(out_dir / f"{name}.json", (json.dumps(manifest, indent=2) + "\n").encode())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_dir / f"{name}.onnx"
