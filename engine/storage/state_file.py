"""Resumable training state that holds no code: one safetensors file whose tensors are the state's tensors
and whose metadata is the rest of it (steps, seconds, the learning curve, optimiser scalars) as JSON.

Loading parses a safetensors header (JSON) and raw tensor bytes; nothing is unpickled, so a state file
planted in a shared checkpoint folder can at worst hold wrong numbers, never run anything. A state written
by an older tapdiff as a pickle (``*.pt``) is refused by name (``legacy_state_error``), never opened.

The nested structure (dicts, lists, tuples, tensors, JSON scalars) round-trips exactly: tuples and dicts with
number keys (the optimiser's per-parameter state, accuracy by sigma) are tagged in the JSON, each tensor is stored under the
path where it sat (``opt/state/3/exp_avg``) and put back there.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .checkpoint import CheckpointError
from ..errors import InvalidInput
from .safe_files import parse_json, regular_file

FORMAT = "tapdiff-state/1"
SUFFIX = ".state.safetensors"
_TENSOR, _TUPLE, _PAIRS = "__tensor__", "__tuple__", "__pairs__"


def state_path(folder: str | os.PathLike, name: str) -> Path:
    """Where the resumable state of ``name`` (e.g. "classifier", "score_subnet") lives in a state folder."""
    return Path(folder) / f"{name}{SUFFIX}"


def legacy_state_error(path: Path) -> CheckpointError | None:
    """The error for a pickled state an older tapdiff left beside ``path`` (``NAME.pt``), else None."""
    legacy = path.with_name(path.name.removesuffix(SUFFIX) + ".pt") if path.name.endswith(SUFFIX) else None
    if legacy is not None and legacy.exists():
        return CheckpointError(
            f"{legacy} is a pickled training state; tapdiff never unpickles (a pickle can run code). Delete it to "
            f"train afresh (resumable state is now {path.name}, tensors and JSON only)")
    return None


def _pack(obj: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[where] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: where}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if {_TENSOR, _TUPLE, _PAIRS} & set(obj):
                raise TypeError(f"state key {where!r} uses a reserved name")
            return {k: _pack(v, f"{where}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, (int, float, str)) and not isinstance(k, bool) for k in obj):
            return {_PAIRS: [[_pack(k, f"{where}/key", tensors), _pack(v, f"{where}/{k}", tensors)]
                             for k, v in obj.items()]}
        raise TypeError(f"state {where!r}: dict keys must be strings or numbers")
    if isinstance(obj, tuple):
        return {_TUPLE: [_pack(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_pack(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise InvalidInput(f"state {where!r} is {obj}: not a finite number")
        return obj
    raise TypeError(f"state {where!r} holds a {type(obj).__name__}, which a state file cannot store")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            name = obj[_TENSOR]
            if not isinstance(name, str) or name not in tensors:
                raise CheckpointError(f"{path}: its metadata names a tensor {name!r} the file does not hold")
            return tensors[name]
        if _TUPLE in obj:
            return tuple(_unpack(v, tensors, path) for v in _as_list(obj[_TUPLE], path))
        if _PAIRS in obj:
            pairs = _as_list(obj[_PAIRS], path)
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (int, float, str)) for p in pairs):
                raise CheckpointError(f"{path}: malformed number-keyed entry in its metadata")
            return {k: _unpack(v, tensors, path) for k, v in pairs}
        return {k: _unpack(v, tensors, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors, path) for v in obj]
    return obj


def _as_list(value, path: Path) -> list:
    if not isinstance(value, list):
        raise CheckpointError(f"{path}: malformed metadata (expected a list, got {type(value).__name__})")
    return value


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (nested dicts/lists/tuples of tensors and JSON scalars) to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_pack(state, "", tensors), allow_nan=False)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "state": meta}))


def load_state(path: str | os.PathLike) -> dict:
    """The state saved at ``path``; a file that is not one (corrupt, truncated, another format) raises a
    ``CheckpointError`` naming it."""
    path = regular_file(path)  # not a FIFO or a device: an open would block, a read never end
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable training state: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    packed = parse_json(meta.get("state", ""), f"{path}'s metadata")
    state = _unpack(packed, tensors, path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
