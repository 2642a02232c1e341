"""What every benchmark CLI ends with: the command that reproduces it, then the report printed and saved."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line(script: str) -> str:
    return f"Command: `python benchmarks/{Path(script).name} {' '.join(shlex.quote(a) for a in sys.argv[1:])}`"


def emit(text: str, out: str | None) -> None:
    print(text)
    if out:
        from engine.atomic import atomic_write_bytes

        atomic_write_bytes(out, text.encode())  # a failed run never leaves a half-written report
