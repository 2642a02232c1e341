"""Where the engine keeps what it builds: the user cache root (exported graphs, optimised graphs, TensorRT
plans, the vocoder), ``$TAPDIFF_CACHE`` or ``~/.cache/tapdiff``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TAPDIFF_CACHE") or Path.home() / ".cache" / "tapdiff")
