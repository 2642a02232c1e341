"""CLI: what determinism costs on the default backend: the engine batch-invariant (a clip's bytes independent of
its batch; free of padding in onnxruntime) against batch-dependent, one clip alone and 16 clips, guided, the
checkpoint's default run, interleaved rounds in one process; medians [p10, p90] and per-round ratios.

    python benchmarks/determinism_cost.py --rounds 7 --out benchmarks/results/determinism_cost.md
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from report import emit, header

from engine.api import Engine
from engine.evaluation.timing import interleaved, paired_ratio, quantiles
from engine.storage.checkpoint import DEFAULT_CHECKPOINT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp(prefix="tapdiff-determinism-")
    engines = {mode: Engine(args.checkpoint, batch_size=16, batch_invariant=mode == "invariant", artifacts=cache)
               for mode in ("invariant", "dependent")}
    assert not engines["invariant"].pads_batches, "the default backend should be invariant by construction"
    lines = [header(__file__), f"Backend {engines['invariant'].backend}, batch size 16, {args.threads} thread(s), "
             f"{args.rounds} interleaved rounds after one warm-up round; seconds per whole generation (sampling and "
             "vocoder).", "", "| clips | batch-invariant (s) | batch-dependent (s) | ratio invariant / dependent |",
             "|---:|---|---|---|"]
    requests = {1: ([0], 1), 16: (list(range(8)), 2)}  # clip 0 of both: digit 0, clip index 0, seed 3
    first = {m: {} for m in engines}
    fmt = lambda d: f"{d['median']:.3f} [{d['p10']:.3f}, {d['p90']:.3f}]"
    for n, (digits, per) in requests.items():
        fns = {m: (lambda e=e, m=m: first[m].__setitem__(n, e.generate(digits, n=per, seed=3).waves[0]))
               for m, e in engines.items()}
        times = interleaved(fns, args.rounds)
        q = {m: quantiles(t) for m, t in times.items()}
        r = paired_ratio(times["invariant"], times["dependent"])
        lines.append(f"| {n} | {fmt(q['invariant'])} | {fmt(q['dependent'])} | "
                     f"{r['median']:.2f} [{r['p10']:.2f}, {r['p90']:.2f}] |")
    lines += ["", "Bytes: clip 0 of the 16-clip request against the same clip requested alone (digit 0, seed 3): "
              + ", ".join(f"{m}: {'bitwise equal' if torch.equal(f[1], f[16]) else 'differs'}"
                          for m, f in first.items())]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
