import pytest

from engine.bundle import load_bundle
from engine.cost import step_cost, time_score_eval


def test_tapdiff_step_macs_add_up_and_guidance_costs_one_more_adjoint(tiny_checkpoint):
    c = step_cost(load_bundle(tiny_checkpoint))
    p = c.parts
    adj1, adj2 = p["classifier adjoint, 1 cotangent"], p["classifier adjoint, 2 stacked cotangents"]
    assert adj2 == 2 * adj1  # the stacked backward is linear in the number of cotangents
    assert adj1 == pytest.approx(p["classifier forward"], rel=0.1)  # conv_transpose costs what its conv does
    assert c.unguided_macs == p["classifier forward"] + adj1 + p["score network"]
    assert c.guided_macs - c.unguided_macs == adj1
    assert c.trainable_params < c.total_params


def test_two_model_guidance_adds_a_classifier_pass(tiny_with_baselines):
    c = step_cost(load_bundle(tiny_with_baselines, subnet_name="unet"))
    assert c.model == "UNet" and c.guided_macs > c.unguided_macs == c.parts["score network"]


def test_score_eval_timing_reports_spread(tiny_checkpoint):
    t = time_score_eval(load_bundle(tiny_checkpoint), batch=2, guidance=3.0, repeats=3, warmup=1)
    assert t["q1_s"] <= t["median_s"] <= t["q3_s"] and t["batch"] == 2
