"""What every benchmark CLI starts and ends with: the provenance header (command, commit, machine, threads,
versions), then the report printed and saved atomically; and the ``--cache`` file of finished results that
lets a long run resume."""
from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path

from engine.provenance import markdown_header, run_record


def command(script: str) -> str:
    """The command line that reproduces this run, from the repository root."""
    return f"python benchmarks/{Path(script).name} {' '.join(shlex.quote(a) for a in sys.argv[1:])}".rstrip()


@functools.lru_cache(maxsize=None)
def record(script: str) -> dict:
    """The run's provenance, taken once per process: a long run calls it first, so the commit and code
    version recorded are those the numbers were measured with."""
    return run_record(command(script))


def header(script: str) -> str:
    return markdown_header(record(script))


def emit(text: str, out: str | None) -> None:
    print(text)
    if out:
        from engine.storage.atomic import atomic_write_bytes

        atomic_write_bytes(out, text.encode())  # a failed run never leaves a half-written report


def load_cache(path: str | None) -> dict:
    """The finished results a ``--cache FILE`` keeps (empty when there is none yet), so an interrupted run resumes."""
    if not path or not Path(path).exists():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"--cache {path} is not valid JSON ({e}); delete it to start afresh") from None


def save_cache(path: str | None, cache: dict) -> None:
    if path:
        from engine.storage.atomic import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(cache, indent=1).encode())


def cache_key(*parts) -> str:
    """The one key recipe of the benchmark caches: the code version (a cached result is reused only by the code
    that made it) and what the result depends on, as JSON."""
    from engine.provenance import code_version

    return json.dumps([code_version(), *parts])
