"""Check an ONNX graph against TensorRT's ONNX-parser operator support matrix, without TensorRT.

The matrix is the onnx-tensorrt ``docs/operators.md`` table (TensorRT 10.0, opsets 9-20; Apache-2.0), shipped
as ``export/data/onnx-operators-trt10.md`` (package data; source and licence in ``export/data/NOTICE``), so
nothing outside the package is read; ``TAPDIFF_TRT_OPERATORS`` or a path picks another.
What this cannot check: per-operator restrictions that depend on values (the table's last column is
returned for the operators used, to read), plugin availability, and the build itself.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidInput, MissingFile

_ROW = re.compile(r"^\|\s*([A-Za-z0-9_]+)\s*\|\s*(Y|N)\s*\|([^|]*)\|?([^|]*)")
_OPSETS = re.compile(r"opset (\d+) to opset (\d+)")


@dataclass(frozen=True)
class SupportMatrix:
    supported: dict[str, str]  # op -> restrictions ("" if none)
    unsupported: frozenset[str]
    opset_range: tuple[int, int]


DEFAULT_MATRIX = Path(__file__).parent / "data" / "onnx-operators-trt10.md"


def load_support_matrix(path: str | os.PathLike | None = None) -> SupportMatrix:
    path = Path(path or os.environ.get("TAPDIFF_TRT_OPERATORS") or DEFAULT_MATRIX)
    if not path.is_file():
        raise MissingFile(f"TensorRT operator matrix not found at {path!s}; pass its path or set TAPDIFF_TRT_OPERATORS")
    text = path.read_text()
    m = _OPSETS.search(text)
    opsets = (int(m.group(1)), int(m.group(2))) if m else (9, 20)
    supported, unsupported = {}, set()
    for line in text.splitlines():
        r = _ROW.match(line)
        if not r or r.group(1) == "Operator":
            continue
        if r.group(2) == "Y":
            supported[r.group(1)] = r.group(4).strip()
        else:
            unsupported.add(r.group(1))
    if not supported:
        raise InvalidInput(f"{path}: no operator rows found")
    return SupportMatrix(supported, frozenset(unsupported), opsets)


@dataclass
class TrtReport:
    ops: dict[str, int]  # op type -> count in the graph
    unsupported: list[str]
    restrictions: dict[str, str]
    opset: int
    opset_ok: bool
    dynamic_inputs: list[str]  # inputs with a symbolic dimension: need an optimisation profile

    @property
    def ok(self) -> bool:
        return not self.unsupported and self.opset_ok


def check_onnx_for_tensorrt(model_path: str | os.PathLike, matrix: SupportMatrix) -> TrtReport:
    import onnx

    model = onnx.load(str(model_path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            ops[f"{node.domain}::{node.op_type}"] = ops.get(f"{node.domain}::{node.op_type}", 0) + 1
        else:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    unsupported = sorted(op for op in ops if op not in matrix.supported)
    dynamic = [i.name for i in model.graph.input
               if any(d.dim_param or not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)]
    return TrtReport(ops, unsupported, {op: matrix.supported[op] for op in ops if matrix.supported.get(op)},
                     opset, matrix.opset_range[0] <= opset <= matrix.opset_range[1], dynamic)
