"""The one timer of every measurement in this project (bench, profile, the step cost and quality tables, the kernel,
norm and vocoder benchmarks, the GPU timing script), and how it says a run was disturbed.

- ``interleaved``: wall seconds of several alternatives, one call of each per round after untimed warm-up
  rounds, so a drift in the machine's speed falls on all of them alike; ``timed`` is the same for one function.
  On a GPU pass ``sync=device_sync(device)``: the clock stops after the device has finished the work.
- ``quantiles``: a measurement's summary, median [p10, p90] over its rounds; ``paired_ratio`` the same of the
  per-round ratios of two alternatives.
- ``RateWatch``: a reference matmul's rate measured when the run starts and when it ends.

A disturbed run (other work on the machine, a frequency change, a noisy neighbour) still reports, but says so,
so that nobody quotes it: a measurement whose interleaved rounds spread past ``MAX_SPREAD`` (p90 over p10), or a
reference rate that moved between the start and the end of the run by more than ``MAX_DRIFT``."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InvalidInput

MAX_SPREAD = 1.5  # p90 / p10 of one measurement's rounds; quiet runs here stay under 1.2
MAX_DRIFT = 1.25  # the larger over the smaller of two measurements of the same reference rate
REFERENCE_SIZES = (512, 1024, 2048)  # the square float32 matmuls of the reference rate


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """What stops the clock only once ``device`` has done the work queued on it: ``torch.cuda.synchronize`` on
    a CUDA device, nothing on a CPU (its work is done when the call returns)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, number: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each fn, one sample of each per round, ``repeats`` rounds after ``warmup`` untimed rounds;
    a sample is the mean over ``number`` back-to-back calls (for work too short to time one call of: caches stay
    warm between them); ``sync`` (if given) runs before the clock starts and before it stops."""
    if repeats < 1 or number < 1:
        raise InvalidInput("repeats and number must be >= 1")
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            if sync:
                sync()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) / number)
    return times


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None,
          number: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` samples of ``fn`` after ``warmup`` untimed ones (``interleaved`` of one)."""
    return interleaved({"fn": fn}, repeats, warmup, sync, number)["fn"]


def calls_per_sample(fn: Callable[[], object], sync: Callable[[], None] | None = None, seconds: float = 1e-3) -> int:
    """How many back-to-back calls of ``fn`` take about ``seconds`` (at least 1): ``number`` for short work."""
    one = min(timed(fn, 3, 1, sync))
    return max(1, round(seconds / one)) if one > 0 else 1000


def quantiles(xs: list[float]) -> dict:
    """Median, p10 and p90 of a measurement's rounds."""
    qs = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return {"median": statistics.median(xs), "p10": qs[0], "p90": qs[-1]}


def paired_ratio(a: list[float], b: list[float]) -> dict:
    """``quantiles`` of the per-round ratios a / b of two interleaved measurements."""
    return quantiles([x / y for x, y in zip(a, b)])


def matmul_rate(sizes=REFERENCE_SIZES, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """This machine's float32 matmul rate in GMAC/s: the best over square sizes of the median of ``repeats``."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        best = max(best, n ** 3 / statistics.median(timed(lambda: a @ b, repeats, 1, device_sync(device))) / 1e9)
    return best


@dataclass
class RateWatch:
    """The reference matmul rate at the start of a run and at its end (``with RateWatch() as watch: ...``, or
    ``start()`` and ``stop()``), then ``watch.problems`` names a drift past ``MAX_DRIFT`` (empty for a quiet run)."""

    device: str | torch.device = "cpu"
    sizes: tuple[int, ...] = REFERENCE_SIZES
    before: float | None = None
    after: float | None = None
    problems: list[str] = field(default_factory=list)

    def start(self) -> "RateWatch":
        self.before = matmul_rate(self.sizes, device=self.device)
        return self

    def stop(self) -> list[str]:
        """Take the closing rate; the drift's phrase, if any (also kept in ``problems``)."""
        self.after = matmul_rate(self.sizes, device=self.device)
        self.problems = drifted("matmul rate, GMAC/s", self.before, self.after)
        return self.problems

    def __enter__(self) -> "RateWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.stop()


def spread(quantiles: dict) -> float:
    """p90 over p10 of a measurement (``{"median", "p10", "p90"}``)."""
    return quantiles["p90"] / quantiles["p10"] if quantiles["p10"] > 0 else float("inf")


def spread_too_wide(measurements: dict[str, dict]) -> list[str]:
    """The measurements (label: quantiles) whose rounds spread past ``MAX_SPREAD``, each as one phrase."""
    return [f"{label}: p90/p10 {spread(q):.2f}" for label, q in measurements.items() if spread(q) > MAX_SPREAD]


def drifted(what: str, before: float, after: float) -> list[str]:
    """One phrase if two measurements of the same rate differ by more than ``MAX_DRIFT``, else none."""
    low, high = sorted((before, after))
    if low <= 0 or high / low > MAX_DRIFT:
        return [f"{what}: {before:.3g} before, {after:.3g} after"]
    return []


def warning_line(problems: list[str]) -> str:
    """The report's line for a disturbed run ('' for a quiet one)."""
    if not problems:
        return ""
    return (f"**Disturbed run** ({len(problems)} measurement(s) past the quiet-run bounds: p90/p10 {MAX_SPREAD}, "
            f"drift {MAX_DRIFT}x): {'; '.join(problems)}. Rerun on a quiet machine before quoting these figures.")
