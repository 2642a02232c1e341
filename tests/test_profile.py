"""The step profiler: stages that add up, MACs attributed to the stage that does them."""
import json

import torch

from engine.api import Engine
from engine.cli import main
from engine.evaluation.cost import step_cost
from engine.evaluation.profile import StageFlopCounter, profile_sampling
from engine.stages import STAGES, current_stage, stage


def test_stages_nest_and_attribute_flops_to_the_innermost():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with StageFlopCounter() as counter:
        with stage("decoder"):
            a @ b
            with stage("attention"):
                assert current_stage() == "attention"
                a @ b
                a @ b
        a @ b
    assert current_stage() is None
    mm = 2 * 8 ** 3
    assert dict(counter.by_stage) == {"decoder": mm, "attention": 2 * mm, None: mm}
    assert counter.get_total_flops() == 4 * mm  # the per-stage split adds up to FlopCounterMode's own total


def test_profile_of_a_step_splits_time_and_macs_by_stage(tiny_checkpoint, tmp_path):
    engine = Engine(tiny_checkpoint, batch_size=3, backend="torch")  # stages are eager PyTorch's
    r = profile_sampling(engine, batch=3, steps=2, guidance=3.0, sampler="dpmpp_2m", out_dir=tmp_path, repeats=1)
    rows = {s["stage"]: s for s in r["stages"]}
    assert list(rows) == list(STAGES)
    for name in ("classifier forward", "classifier adjoint", "tap normalisation", "attention", "decoder", "vocoder"):
        assert rows[name]["seconds_per_step"] > 0, name
    # MACs: the stages of one step add up to the guided score evaluation's count, per clip times the batch
    macs = sum(s["macs_per_step"] for s in r["stages"] if s["stage"] != "vocoder")
    assert macs == 3 * step_cost(engine.bundle).guided_macs
    assert abs(sum(s["share_of_step"] for s in r["stages"] if s["share_of_step"] is not None) - 1) < 1e-9
    trace = json.loads((tmp_path / "trace_tapdiff.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"classifier adjoint", "attention", "vocoder"} <= names
    assert r["matmul_gmac_per_s_before"] > 0 and isinstance(r["disturbed"], list)  # both rates kept, judged


def test_profile_command_writes_its_report(tiny_with_baselines, tmp_path):
    assert main(["profile", "--checkpoint", str(tiny_with_baselines), "--models", "two-model", "--batch", "2",
                 "--steps", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile.md").read_text()
    assert text.startswith("Command: `tapdiff profile") and "| classifier adjoint |" in text
