"""A timed run says when it was disturbed (engine.evaluation.disturbance): bench and profile still report, with
a warning line naming each measurement past the quiet-run bounds."""
from engine.evaluation.bench import disturbances, render
from engine.evaluation.disturbance import (MAX_DRIFT, MAX_SPREAD, drifted, quantiles, spread, spread_too_wide,
                                           warning_line)
from engine.evaluation.profile import render_profile


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
