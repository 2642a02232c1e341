"""The vocoder cache format: ``hifigan.safetensors`` + ``hifigan.json`` (config, source, provenance, the
weights' sha256) in a folder of the user cache. At run time only this module and safetensors are used:
no TorchScript, no pickle."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError, InvalidInput, VocoderCacheError, VocoderMissing
from ..models.hifigan import HiFiGANConfig, HiFiGANGenerator, load_state_dict_checked
from ..storage.atomic import atomic_write_bytes, make_folder
from ..storage.hashing import bytes_sha256
from ..storage.paths import cache_root
from ..storage.safe_files import load_json

WEIGHTS_FILE = "hifigan.safetensors"
CONFIG_FILE = "hifigan.json"
FORMAT = "tapdiff-hifigan/1"


def default_vocoder_dir() -> Path:
    return cache_root() / "vocoder" / "hifigan-ts-16k"


def save_vocoder(model: HiFiGANGenerator, config: HiFiGANConfig, directory: str | os.PathLike, source: str,
                 provenance: dict | None = None) -> Path:
    """Write hifigan.safetensors, then hifigan.json (config, source, weights sha256), each atomically."""
    from safetensors.torch import save

    directory = make_folder(directory)
    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                metadata={"format": FORMAT, "source": source})
    meta = {"format": FORMAT, "source": source, "provenance": provenance or {}, "config": config.to_dict(),
            "weights_file": WEIGHTS_FILE, "weights_sha256": bytes_sha256(blob)}
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def read_vocoder_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise VocoderMissing(f"{path}: no vocoder here; create it with `tapdiff vocoder import`")
    try:
        meta = load_json(path, within=directory, max_bytes=1 << 20)
        if meta.get("format") != FORMAT:
            raise InvalidInput(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        meta["config"] = HiFiGANConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError, CheckpointError) as e:
        raise VocoderCacheError(f"{path}: corrupt vocoder config ({type(e).__name__}: {e})") from e
    return meta


def load_vocoder(directory: str | os.PathLike | None = None) -> HiFiGANGenerator:
    """Load a saved vocoder (default: default_vocoder_dir()) in eval mode, checking the weights' sha256."""
    from safetensors.torch import load

    directory = Path(directory) if directory is not None else default_vocoder_dir()
    meta = read_vocoder_meta(directory)
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise VocoderMissing(f"{wpath}: vocoder weights missing; re-run `tapdiff vocoder import`")
    blob = wpath.read_bytes()
    if bytes_sha256(blob) != meta.get("weights_sha256"):
        raise VocoderCacheError(f"{wpath}: sha256 does not match {CONFIG_FILE} (corrupt or replaced weights)")
    try:
        sd = load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise VocoderCacheError(f"{wpath}: corrupt safetensors file ({type(e).__name__}: {e})") from e
    model = HiFiGANGenerator(meta["config"])
    load_state_dict_checked(model, sd, f"weights {wpath}")
    return model.eval()
