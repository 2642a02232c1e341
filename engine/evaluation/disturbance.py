"""The summary of a measurement's interleaved rounds (``quantiles``), and whether a timed run was disturbed: other work on the machine, a frequency change, a noisy neighbour. Such a
run still reports, but says so, so that nobody quotes it: a measurement whose interleaved rounds spread past
``MAX_SPREAD`` (p90 over p10), or a reference rate measured before and after the run that moved by more than
``MAX_DRIFT``."""
from __future__ import annotations

import statistics

MAX_SPREAD = 1.5  # p90 / p10 of one measurement's rounds; quiet runs here stay under 1.2
MAX_DRIFT = 1.25  # the larger over the smaller of two measurements of the same reference rate


def quantiles(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return {"median": statistics.median(xs), "p10": qs[0], "p90": qs[-1]}


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
