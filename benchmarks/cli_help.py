"""CLI: wall time of ``tapdiff --help``, ``tapdiff --version`` and every subcommand's ``--help``, each a fresh process.

    python benchmarks/cli_help.py [--runs 5] [--limit 0.5] [--command "python -m engine.cli"] [--out FILE]

Each command runs once to warm the file cache, then ``--runs`` times; the table gives the median, min and max
wall time per command (process start to exit, measured here around ``subprocess.run``) and whether the median
is under ``--limit`` seconds. The subcommands are read from the parser (``engine.cli_parser.build_parser``), so
a new one is timed without editing this file. ``--command`` times another launcher (default: the ``tapdiff``
console script beside this Python, else ``python -m engine.cli``), e.g. an older checkout's
``python -m engine.cli`` run from its folder (``--cwd``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from report import emit, header

from engine.cli_parser import build_parser, subcommands
from engine.evaluation.timing import timed


def default_launcher() -> list[str]:
    script = Path(sys.executable).parent / "tapdiff"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


def help_commands() -> list[list[str]]:
    """``--help``, ``--version``, then ``<subcommand> --help`` for every (nested) subcommand of the parser."""
    return [["--help"], ["--version"], *([*path, "--help"] for path, _ in subcommands(build_parser()))]


def time_command(argv: list[str], runs: int, cwd: str | None) -> tuple[list[float], int]:
    """Wall times of ``runs`` runs after one warm-up (it warms the file cache), and the exit status (the first
    nonzero one, else 0)."""
    env = {**os.environ, "COLUMNS": "100"}
    statuses = []

    def run() -> None:
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}", file=sys.stderr)
        statuses.append(done.returncode)

    times = timed(run, repeats=runs, warmup=1)
    return times, next((s for s in statuses if s), 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per command, after one warm-up (default: 5)")
    p.add_argument("--limit", type=float, default=0.5, help="target median wall time in seconds (default: 0.5)")
    p.add_argument("--command", default=None,
                   help="launcher to time, e.g. 'python -m engine.cli' (default: the tapdiff script beside this Python)")
    p.add_argument("--cwd", default=None, help="folder the launcher runs in (default: this one)")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    launcher = shlex.split(args.command) if args.command else default_launcher()
    lines = [header(__file__),
             f"Launcher: `{shlex.join(launcher)}`; median, min and max of {args.runs} fresh processes after one warm-up, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, target median < {args.limit:g} s.", "",
             "| command | median s | min s | max s | under target |", "|---|---:|---:|---:|---|"]
    commands, slow = help_commands(), 0
    for argv in commands:
        times, status = time_command([*launcher, *argv], args.runs, args.cwd)
        med = statistics.median(times)
        ok = med < args.limit and not status
        slow += not ok
        lines.append(f"| `tapdiff {shlex.join(argv)}` | {med:.3f} | {min(times):.3f} | {max(times):.3f} | "
                     f"{'yes' if ok else '**no**'}{f' (exit {status})' if status else ''} |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"{len(commands) - slow} of {len(commands)} commands exit 0 with a median under {args.limit:g} s."]
    emit("\n".join(lines) + "\n", args.out)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
