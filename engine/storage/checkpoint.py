"""Checkpoint bundles: a directory holding ``config.json`` and one safetensors file per model.

config.json carries every config dataclass, the normalisation statistics, the sigma range, the training
commands and the data hash, plus the sha256 of each weights file, so a bundle alone rebuilds its models
and a corrupt or swapped file is caught before use. Writes are atomic: a failed write leaves the previous
bundle intact.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .atomic import atomic_write
from .hashing import file_sha256
from .safe_files import load_json, regular_file

FORMAT = "tapdiff/1"
DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "fsdd"


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.exists():
        raise CheckpointError(f"{path} is missing: not a tapdiff checkpoint")
    cfg = load_json(path, within=directory)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {cfg.get('format') if isinstance(cfg, dict) else cfg!r}, expected {FORMAT}")
    why = config_problem(cfg)
    if why is not None:
        raise CheckpointError(f"{path}: {why}")
    return cfg


_SHA256 = re.compile(r"[0-9a-f]{64}")
SAMPLING_DEFAULTS = {"sampler": "heun", "steps": 25, "rho": None, "options": {}, "vocoder": "pghi",
                     "guidance_fade_sigma": 0.0}  # for a bundle without a measured choice
STUDENT_SAMPLING_DEFAULTS = {**SAMPLING_DEFAULTS, "sampler": "multistep", "steps": 4}  # a distilled student's


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def config_problem(cfg: dict) -> str | None:
    """What is wrong with the shape of config.json's bundle-level entries (None: nothing), naming the key.
    The dataclass sections (features, sde, classifier, the score networks' configs) are checked field by
    field when they are built (``engine.storage.config.from_dict``)."""
    files = cfg.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v)
                                              for k, v in files.items()):
        return "'files' must map each weights file name to its sha256 (64 hex digits)"
    labels = cfg.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(y, int) and not isinstance(y, bool) and y >= 0
                                               for y in labels):
        return "'labels' must be a list of integers >= 0"
    for key in ("training", "data", "evaluator", "normaliser"):
        if key in cfg and not isinstance(cfg[key], dict):
            return f"{key!r} must be a mapping, got {type(cfg[key]).__name__}"
    if any(not isinstance(v, dict) for v in cfg.get("training", {}).values()):
        return "'training' must map each network to its training record"
    for name, record in cfg.get("training", {}).items():
        trained = record.get("config", {})
        trained = trained.get("labels", []) if isinstance(trained, dict) else None
        if not isinstance(trained, list) or not all(isinstance(y, int) and not isinstance(y, bool) for y in trained):
            return f"'training.{name}.config.labels' must be a list of integers"
    if "evaluator" in cfg and not isinstance(cfg["evaluator"].get("arch"), dict):
        return "'evaluator.arch' must be a mapping of the evaluation classifier's arguments"
    sampling = cfg.get("sampling", {})
    if not isinstance(sampling, dict):
        return f"'sampling' must be a mapping, got {type(sampling).__name__}"
    per_model = sampling.get("models", {})
    if not isinstance(per_model, dict) or not all(isinstance(v, dict) for v in per_model.values()):
        return "'sampling.models' must map a model's name to its own sampling section"
    for key, section in [("sampling", {k: v for k, v in sampling.items() if k != "models"}),
                         *((f"sampling.models.{m}", v) for m, v in per_model.items())]:
        if (why := _sampling_problem(key, section)) is not None:
            return why
    return None


def _sampling_problem(key: str, sampling: dict) -> str | None:
    s = {**SAMPLING_DEFAULTS, **sampling}
    if not isinstance(s["sampler"], str):
        return f"'{key}.sampler' must be a solver's name"
    if isinstance(s["steps"], bool) or not isinstance(s["steps"], int) or s["steps"] < 1:
        return f"'{key}.steps' must be an integer >= 1, got {s['steps']!r}"
    if s["rho"] is not None and not (_number(s["rho"]) and s["rho"] > 0):
        return f"'{key}.rho' must be a number > 0 or null, got {s['rho']!r}"
    if not isinstance(s["options"], dict) or not all(isinstance(k, str) and _number(v) for k, v in s["options"].items()):
        return f"'{key}.options' must map option names to numbers"
    if not isinstance(s["vocoder"], str):
        return f"'{key}.vocoder' must be a vocoder's name"
    if not (_number(s["guidance_fade_sigma"]) and s["guidance_fade_sigma"] >= 0):
        return f"'{key}.guidance_fade_sigma' must be a number >= 0, got {s['guidance_fade_sigma']!r}"
    if not isinstance(s.get("meets_default_rule", False), bool):
        return f"'{key}.meets_default_rule' must be true or false"
    return None


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
    cfg["files"] = {**cfg.get("files", {}), path.name: file_sha256(path)}
    return cfg


def load_weights(directory: str | Path, name: str, module: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    directory = Path(directory)
    path = directory / f"{name}.safetensors"
    regular_file(path, within=directory)  # not a FIFO, device or link out of the folder (before hashing it)
    expected = cfg.get("files", {}).get(path.name)
    if expected is None and cfg:
        raise CheckpointError(f"{path} is not listed in config.json's files (its sha256): refused unverified")
    if expected is not None and file_sha256(path) != expected:
        raise CheckpointError(f"{path} is corrupt or was replaced: its sha256 does not match config.json")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    cast = sorted(k for k in set(own) & set(state) if own[k].dtype != state[k].dtype)
    if cast:
        raise CheckpointError(f"{path}: tensors {cast[:4]} are {state[cast[0]].dtype}, the network holds "
                              f"{own[cast[0]].dtype}: refused rather than cast")
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit {type(module).__name__}: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shapes {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]]}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: tensor {k} holds NaN or inf")
    module.load_state_dict(state)
    return module
