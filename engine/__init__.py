"""tapdiff: class-conditional speech generation with one frozen classifier as the whole backbone."""
from __future__ import annotations

__all__ = ["Engine", "Generation"]


def __getattr__(name: str):
    """``engine.Engine`` and ``engine.Generation`` load ``engine.api`` (and torch) on first use (PEP 562), so that
    importing a light module of the package (the CLI's parser) does not import torch."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
