"""The one sha256 of a file (streamed, so a large graph or plan is never read whole) and of bytes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import CheckpointError


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of regular file ``path`` (a FIFO or a link to a device is refused: it would never end)."""
    from .safe_files import regular_file

    regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_of(path: str | os.PathLike) -> Path:
    """Where the sha256 of a cached artifact is kept: beside it, ``NAME.sha256``."""
    return Path(path).with_suffix(".sha256")


def sidecar_problem(path: str | os.PathLike) -> str | None:
    """Why the artifact at ``path`` must not be used, judged against the sha256 written beside it when it was
    made (None: its bytes match). An artifact is written first and its sidecar last, so an interrupted write
    leaves an artifact without a matching sidecar."""
    path = Path(path)
    sidecar = sidecar_of(path)
    if not path.exists():
        return "missing"
    if not sidecar.exists():
        return f"no sha256 sidecar {sidecar.name} beside it (its write was interrupted, or the sidecar was removed)"
    try:
        want = sidecar.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"its sha256 sidecar {sidecar.name} is unreadable ({type(e).__name__}: {e})"
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        return f"its sha256 sidecar {sidecar.name} does not hold a sha256"
    try:
        have = file_sha256(path)
    except (OSError, CheckpointError) as e:
        return f"it is unreadable ({type(e).__name__}: {e})"
    if have != want:
        return "its bytes differ from the sha256 recorded when it was written (corrupt or replaced)"
    return None
