"""The one timer (engine.evaluation.timing): interleaved rounds, samples of several calls, the device synchronised
inside the clock, medians with p10-p90, paired ratios; and a timed run that says when it was disturbed: bench and
profile still report, with a warning line naming each measurement past the quiet-run bounds."""
import time

import pytest

from engine.evaluation import timing
from engine.evaluation.bench import disturbances, render
from engine.evaluation.profile import render_profile
from engine.evaluation.timing import (MAX_DRIFT, MAX_SPREAD, RateWatch, drifted, interleaved, paired_ratio, quantiles,
                                      spread, spread_too_wide, timed, warning_line)


def test_interleaving_runs_one_call_of_each_per_round():
    order = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4 and [len(v) for v in times.values()] == [3, 3]


def test_a_sample_is_the_mean_of_its_calls_and_sync_runs_inside_the_clock():
    events = []

    def work():
        events.append("work")
        time.sleep(0.002)

    def sync():  # stands in for the device finishing queued work: 10 ms that the sample must include
        events.append("sync")
        time.sleep(0.01)

    (sample,) = timed(work, repeats=1, warmup=0, sync=sync, number=4)
    assert events == ["sync", "work", "work", "work", "work", "sync"]
    assert (0.008 + 0.01) / 4 <= sample < 0.05  # the closing sync is inside the clock, shared by the 4 calls
    with pytest.raises(ValueError):
        timed(work, repeats=0)


def test_ratios_are_paired_per_round():
    a, b = [2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0]  # a drifts, but is always twice b
    assert paired_ratio(a, b) == {"median": 2.0, "p10": 2.0, "p90": 2.0}
    q = quantiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert q["median"] == 3.0 and q["p10"] < 1.5 and q["p90"] > 4.5


def test_the_rate_watch_flags_a_reference_rate_that_moved(monkeypatch):
    rates = iter([80.0, 41.0, 80.0, 78.0])
    monkeypatch.setattr(timing, "matmul_rate", lambda *a, **k: next(rates))
    with RateWatch() as slowed:
        pass
    assert slowed.problems == ["matmul rate, GMAC/s: 80 before, 41 after"]
    with RateWatch() as quiet:
        pass
    assert (quiet.before, quiet.after, quiet.problems) == (80.0, 78.0, [])


def test_the_reference_rate_is_a_real_measurement():
    assert 0.1 < timing.matmul_rate(sizes=(256,), repeats=3) < 1e5  # GMAC/s of a float32 matmul on this machine


def test_spread_and_drift_flag_only_what_is_past_the_bounds():
    quiet, noisy = quantiles([1.0, 1.02, 0.98, 1.01, 1.0]), quantiles([1.0, 1.0, 3.0, 1.0, 0.5])
    assert spread(quiet) < 1.1 and spread(noisy) > MAX_SPREAD
    assert spread_too_wide({"quiet": quiet}) == []
    assert [p.split(":")[0] for p in spread_too_wide({"quiet": quiet, "noisy": noisy})] == ["noisy"]
    assert drifted("matmul rate", 80.0, 78.0) == [] and drifted("matmul rate", 41.0, 80.0)
    assert drifted("matmul rate", 80.0, 80.0 / MAX_DRIFT / 1.01) and drifted("rate", 0.0, 1.0)
    assert warning_line([]) == "" and "Disturbed run" in warning_line(["x: p90/p10 3.00"])


def _result(per_clip_at_4: float, round_times: list[float]) -> dict:
    q = quantiles(round_times)
    gen = [{"batch": 1, "guidance": 3.0, "seconds": {"a/torch": q}, "seconds_per_clip": {"a/torch": q},
            "clips_per_s": {"a/torch": 1.0}, "rtf": {"a/torch": 1.0}, "ratios": {}},
           {"batch": 4, "guidance": 3.0, "seconds": {"a/torch": quantiles([4 * per_clip_at_4] * 3)},
            "seconds_per_clip": {"a/torch": quantiles([per_clip_at_4] * 3)}, "clips_per_s": {"a/torch": 1.0},
            "rtf": {"a/torch": 1.0}, "ratios": {}}]
    return {"score_eval": [], "generate": gen}


def test_bench_flags_rounds_that_spread_and_a_batch_that_costs_far_more_per_clip():
    assert disturbances(_result(0.5, [1.0, 1.01, 0.99])) == []
    problems = disturbances(_result(19.0, [1.0, 1.01, 0.99]))  # what one disturbed bench showed: 19x per clip
    assert problems == ["a/torch: a clip in a batch of 4 took 19.0x a clip alone"]
    assert any("generate 1 clips on a/torch" in p for p in disturbances(_result(0.5, [1.0, 4.0, 1.0, 0.6])))


def test_the_reports_carry_the_warning():
    result = {"systems": {}, "skipped": {}, "disturbed": ["a/torch: a clip in a batch of 4 took 19.0x a clip alone"],
              "score_eval": [], "generate": [], "quality": {}, "scaling": {}, "parity": {}, "clip_seconds": 0.72,
              "targets": [], "config": {"guidances": [3.0]}}
    text = render(result, "header")
    assert "**Disturbed run**" in text and "19.0x" in text
    assert "Disturbed run" not in render({**result, "disturbed": []}, "header")
    profile = {"model": "tapdiff", "backend": "torch", "batch": 1, "guidance": 3.0, "sampler": "s", "steps": 1,
               "stages": [], "profiled_step_s": 1.0, "measured_step_s": 1.0, "measured_vocoder_s": 1.0,
               "matmul_gmac_per_s": 80.0, "stages_sum_over_measured": 1.0,
               "disturbed": drifted("matmul rate, GMAC/s", 41.0, 80.0)}
    assert "**Disturbed run**" in render_profile(profile) and "41 before, 80 after" in render_profile(profile)
