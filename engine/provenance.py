"""What every results file and cache records about the run that produced it: the command, the commit and
code version, the machine, thread count and library versions."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (or site-packages) holding engine/


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex) over the engine's, kernels' and export's Python sources: what a cached result must
    match to be reused. Unlike the commit it also changes with uncommitted edits, and works without git."""
    h = hashlib.sha256()
    for pkg in ("engine", "kernels", "export"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    """Short commit of the working tree, with "+dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=10)
        commit = run(["git", "rev-parse", "--short=12", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(command: str) -> dict:
    import torch

    versions = {d: _version(d) for d in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "triton",
                                          "tensorrt")}
    return {
        "command": command,
        "commit": git_commit(),
        "code_version": code_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": sys.version.split()[0], **{k: v for k, v in versions.items() if v}},
    }


def markdown_header(record: dict) -> str:
    """The lines a markdown results file starts with."""
    m, v = record["machine"], record["versions"]
    return "\n".join([
        f"Command: `{record['command']}`",
        f"Commit: {record['commit']} (code version {record['code_version']}), {record['date']}",
        f"Machine: {m['cpu']}, {m['cores']} cores, {record['torch_threads']} torch threads"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]) + "\n"
