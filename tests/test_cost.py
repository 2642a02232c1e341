import pytest

from engine.evaluation.cost import n_params, step_cost
from engine.bundle import load_bundle


def test_tapdiff_step_macs_add_up_and_guidance_costs_one_more_adjoint(tiny_checkpoint):
    b = load_bundle(tiny_checkpoint)
    c = step_cost(b)
    p = c.parts
    adj1, adj2 = p["classifier adjoint, 1 cotangent"], p["classifier adjoint, 2 stacked cotangents"]
    assert adj2 == 2 * adj1  # the stacked backward is linear in the number of cotangents
    assert adj1 == pytest.approx(p["classifier forward"], rel=0.1)  # conv_transpose costs what its conv does
    # the totals are counted on the whole score model; its parts, counted separately, add up to them
    assert c.unguided_macs == p["classifier forward"] + adj1 + p["score network"]
    assert c.guided_macs - c.unguided_macs == adj1
    assert c.trainable_params == n_params(b.score_net) < c.total_params == n_params(b.score_net) + n_params(b.classifier)


def test_two_model_guidance_adds_a_classifier_pass(tiny_with_baselines):
    c = step_cost(load_bundle(tiny_with_baselines, model="two-model"))
    assert c.model == "two-model" and c.unguided_macs == c.parts["score network"]
    assert c.guided_macs == c.unguided_macs + c.parts["classifier forward + 1-cotangent adjoint (guided only)"]
