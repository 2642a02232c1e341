"""Argument types shared by ``tapdiff`` and the benchmark CLIs: each parses one kind of value and names what
is wrong with a bad one (argparse prints it as a usage error, exit status 2)."""
from __future__ import annotations

import argparse


def labels(text: str) -> tuple[int, ...]:
    """Comma-separated digits 0-9, e.g. ``0,1,2`` or ``7``."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must be comma-separated digits, got {text!r}") from None
    if not out or any(not 0 <= y <= 9 for y in out):
        raise argparse.ArgumentTypeError(f"labels must be digits 0-9, got {text!r}")
    return out


def widths(text: str) -> tuple[int, ...]:
    """Channels per depth, at least 3, each a positive multiple of 8 (GroupNorm's groups divide them)."""
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    if len(out) < 3 or any(w < 1 or w % 8 for w in out):
        raise argparse.ArgumentTypeError(f"need >= 3 widths, each a positive multiple of 8, got {text!r}")
    return out


def batches(text: str) -> tuple[int, ...]:
    """Comma-separated batch sizes >= 1."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return out


def names(text: str) -> list[str]:
    """Comma-separated names (models, backends)."""
    return [m for m in text.split(",") if m]


def numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
