"""The artifact cache: exported score graphs (and the runtimes' own builds of them) keyed by everything they
depend on, so a stale or corrupt artifact is rebuilt, never used.

Layout under the cache folder (``$TAPDIFF_CACHE`` or ``~/.cache/tapdiff``, or one given):

    score/<model>-<key>/{guided,unguided}_{dyn,bN}.onnx + .json    exported graphs, manifests with parity
    score/<model>-<key>/ort/<runtime key>/*.onnx                     onnxruntime's optimised graphs
    score/<model>-<key>/trt/*.plan                                    TensorRT engines (export.tensorrt_build)

``key`` hashes the ``GraphSpec``: the weights' sha256 (classifier and score network), the guidance fade,
the shapes (a dynamic batch axis, or static batch sizes), the opset, the engine's code version and
torch's version. Each manifest repeats the spec and the graph's own sha256; a manifest that is missing,
unreadable or disagrees, or a graph whose bytes changed, is rebuilt with a logged warning saying why; a first
export is announced (at info) before it starts, since it takes seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.diffusion.score_model import GuidedDenoiser
from engine.provenance import code_version
from engine.models.registry import score_network_kind
from engine.bundle import Bundle
from engine.errors import CheckpointError, InvalidInput

from engine.storage.hashing import file_sha256
from engine.storage.safe_files import load_json
from engine.storage.paths import cache_root

from .graphs import SCORE_INPUTS, SCORE_OUTPUTS, score_inputs
from .onnx_export import DEFAULT_OPSET, export_onnx, graph_identity

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return cache_root()


@dataclass(frozen=True)
class GraphSpec:
    """Everything an exported score graph depends on."""

    model: str
    weights: tuple[tuple[str, str], ...]  # (weights file, sha256)
    fade_sigma: float
    batches: tuple[int, ...] | None  # static batch sizes; None: one graph per variant with a dynamic batch axis
    opset: int
    code_version: str
    torch: str

    @classmethod
    def of(cls, bundle: Bundle, model: GuidedDenoiser, batches: tuple[int, ...] | None = None,
           opset: int = DEFAULT_OPSET) -> "GraphSpec":
        files = ("classifier", score_network_kind(bundle.model).weights)
        weights = tuple((f, bundle.weights_sha256(f) or _module_sha256(m))
                        for f, m in zip(files, (bundle.classifier, model.denoiser.net)))
        if batches is not None and (not batches or any(b < 1 for b in batches)):
            raise InvalidInput(f"static batch sizes must be >= 1, got {batches}")
        return cls(bundle.model, weights, float(model.fade_sigma), tuple(sorted(set(batches))) if batches else None,
                   opset, code_version(), torch.__version__)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def graphs(self) -> list[tuple[bool, int | None]]:
        """(guided, static batch or None) of every graph of this spec."""
        return [(g, b) for g in (True, False) for b in (self.batches or (None,))]


def _module_sha256(module: torch.nn.Module) -> str:
    from .onnx_export import weights_sha256

    return weights_sha256(module)


def graph_name(guided: bool, batch: int | None) -> str:
    return f"{'guided' if guided else 'unguided'}_{'dyn' if batch is None else f'b{batch}'}"


def artifact_dir(cache_dir: str | os.PathLike, spec: GraphSpec) -> Path:
    return Path(cache_dir) / "score" / f"{spec.model}-{spec.key()}"


def stale_reason(onnx_path: Path, spec: GraphSpec) -> str | None:
    """Why the graph at ``onnx_path`` cannot be used for ``spec`` (None: it can)."""
    manifest_path = onnx_path.with_suffix(".json")
    if not onnx_path.exists():
        return f"{onnx_path.name} is missing"
    if not manifest_path.exists():
        return f"{manifest_path.name} is missing (an interrupted export?)"
    try:
        manifest = load_json(manifest_path, max_bytes=1 << 20)
        built_for, recorded = manifest["artifact"], manifest["onnx_sha256"]
    except (ValueError, KeyError, TypeError, OSError, CheckpointError) as e:
        return f"{manifest_path.name} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(built_for, dict) or not isinstance(recorded, str):
        return f"{manifest_path.name} is unreadable (its artifact or onnx_sha256 entry has the wrong type)"
    want = json.loads(json.dumps(asdict(spec)))  # tuples as lists, like the manifest
    if built_for != want:
        diff = sorted(k for k in want if built_for.get(k) != want[k])
        return f"{onnx_path.name} was built for other {', '.join(diff)}"
    if file_sha256(onnx_path) != recorded:
        return f"{onnx_path.name} is corrupt (its sha256 differs from its manifest's)"
    guided, batch = built_for_graph(onnx_path)
    try:
        stamped = graph_identity(onnx_path)
    except Exception as e:  # noqa: BLE001 - onnx's own decode errors
        return f"{onnx_path.name} is unreadable as ONNX ({type(e).__name__})"
    if stamped != graph_identity_of(spec, guided, batch):
        return f"{onnx_path.name} is another graph (stamped {stamped!r}): copied over this one"
    return None


def built_for_graph(onnx_path: Path) -> tuple[bool, int | None]:
    """(guided, batch) that a graph's file name says it is (``graph_name``)."""
    kind, _, size = onnx_path.stem.partition("_")
    return kind == "guided", None if size == "dyn" else int(size.removeprefix("b"))


def export_score_graph(model: GuidedDenoiser, hw: tuple[int, int], out_dir: Path, guided: bool, batch: int | None,
                       spec: GraphSpec) -> Path:
    """One score graph of ``spec``: traced at ``batch`` (2 for a dynamic graph), parity-checked in
    onnxruntime on fresh inputs of another batch size where the batch axis is dynamic."""
    names = SCORE_INPUTS[guided]
    traced_at = batch or 2
    checked_at = batch or 3
    dynamic = None if batch is not None else {n: {0: "batch"} for n in names + SCORE_OUTPUTS}
    return export_onnx(model.eval(), score_inputs(model, traced_at, hw, guided), out_dir, graph_name(guided, batch),
                       names, SCORE_OUTPUTS, lambda: score_inputs(model, checked_at, hw, guided, seed=1),
                       dynamic_axes=dynamic, opset=spec.opset, extra={"artifact": asdict(spec)},
                       identity=graph_identity_of(spec, guided, batch))


def graph_identity_of(spec: GraphSpec, guided: bool, batch: int | None) -> str:
    """What a score graph is: its model, weights, fade, code version and the like (the spec's key) and which of the
    spec's graphs (guided or not, its batch), stamped into the graph at export."""
    return f"{spec.model}|{spec.key()}|{graph_name(guided, batch)}"


def ensure_score_graphs(model: GuidedDenoiser, bundle: Bundle, spec: GraphSpec, cache_dir: str | os.PathLike
                        ) -> dict[tuple[bool, int | None], Path]:
    """Every graph of ``spec`` from the cache, exporting (and parity-checking) what is missing or stale."""
    out_dir = artifact_dir(cache_dir, spec)
    paths = {}
    for guided, batch in spec.graphs():
        path = out_dir / f"{graph_name(guided, batch)}.onnx"
        reason = stale_reason(path, spec)
        if reason is not None:
            if path.exists() or path.with_suffix(".json").exists():
                logger.warning(f"rebuilding {path}: {reason}")
            else:
                logger.info(f"exporting the {spec.model} score graph {path.name} to {out_dir} (once: later runs "
                            "load it)")
            with torch.no_grad():
                export_score_graph(model, bundle.input_hw, out_dir, guided, batch, spec)
        paths[(guided, batch)] = path
    return paths
