"""Checkpoint bundles: a directory holding ``config.json`` and one safetensors file per model.

config.json carries every config dataclass, the normalisation statistics, the sigma range, the training
commands and the data hash, plus the sha256 of each weights file, so a bundle alone rebuilds its models
and a corrupt or swapped file is caught before use. Writes are atomic: a failed write leaves the previous
bundle intact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write

FORMAT = "tapdiff/1"
DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "fsdd"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.exists():
        raise CheckpointError(f"{path} is missing: not a tapdiff checkpoint")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {cfg.get('format') if isinstance(cfg, dict) else cfg!r}, expected {FORMAT}")
    return cfg


def write_config(directory: str | Path, cfg: dict) -> None:
    cfg = {"format": FORMAT, **{k: v for k, v in cfg.items() if k != "format"}}
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(directory) / "config.json", lambda tmp: Path(tmp).write_text(text))


def update_config(directory: str | Path, updates: dict, training: dict | None = None, files: dict | None = None) -> None:
    """Merge a command's own entries into config.json as it is now (re-read at write time), so commands
    that add to one bundle (train-score, train-evaluator) never drop each other's entries."""
    cfg = read_config(directory)
    cfg.update(updates)
    if training:
        cfg["training"] = {**cfg.get("training", {}), **training}
    if files:
        cfg["files"] = {**cfg.get("files", {}), **files}
    write_config(directory, cfg)


def save_weights(directory: str | Path, name: str, module: torch.nn.Module, cfg: dict) -> dict:
    """Write ``name.safetensors`` atomically and record its hash in ``cfg['files']`` (returned, not written)."""
    directory = Path(directory)
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    cfg = dict(cfg)
    cfg["files"] = {**cfg.get("files", {}), path.name: _sha256(path)}
    return cfg


def load_weights(directory: str | Path, name: str, module: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    directory = Path(directory)
    path = directory / f"{name}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path} is missing")
    expected = cfg.get("files", {}).get(path.name)
    if expected is not None and _sha256(path) != expected:
        raise CheckpointError(f"{path} is corrupt or was replaced: its sha256 does not match config.json")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit {type(module).__name__}: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shapes {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]]}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: tensor {k} holds NaN or inf")
    module.load_state_dict(state)
    return module
