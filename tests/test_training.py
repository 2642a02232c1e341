import json

import pytest
import torch
from safetensors.torch import load_file

import engine.training.score as score_training
from engine.audio.datasets import FeatureSet, Normaliser
from engine.diffusion.score_model import build_score_model
from engine.diffusion.taps import TapExtractor
from engine.models.classifier import NoiseConditionedClassifier
from engine.models.registry import SCORE_NETWORKS
from engine.storage.config import ClassifierConfig, SDEConfig, SubnetConfig, TrainConfig
from engine.storage.state_file import load_state
from engine.training.loop import train_loop
from engine.training.score import dsm_loss, train_score

SDE = SDEConfig(sigma_min=0.005, sigma_max=40.0)
TINY_CLF = ClassifierConfig(widths=(8, 8, 16, 16), emb_dim=16)
TINY_SUB = SubnetConfig(widths=(8, 8, 16, 16), emb_dim=16, heads=2)
TAPDIFF = SCORE_NETWORKS["tapdiff"]


def tiny_data(n=8):
    g = torch.Generator().manual_seed(0)
    mels = torch.randn(n, 80, 72, generator=g).cumsum(-1) * 0.2 - 6.0  # smooth in time
    return FeatureSet(mels, torch.arange(n) % 10, torch.tensor([[0, 72]] * n))


def test_dsm_loss_falls_when_overfitting_a_few_clips():
    data = tiny_data()
    norm = Normaliser.fit(data.mels)
    tx = TapExtractor(NoiseConditionedClassifier(TINY_CLF).eval(), SDE)
    x0 = norm.normalise(data.mels)[:, None]
    g = torch.Generator().manual_seed(1)
    sigma, noise = torch.exp(torch.randn(64, generator=g) * 0.5), torch.randn((64, *x0.shape[1:]), generator=g)
    x0r = x0[torch.arange(64) % len(x0)]
    fresh = build_score_model(tx, TAPDIFF.build(TINY_SUB, tx.tap_channels, (80, 72)))
    with torch.no_grad():
        before = float(dsm_loss(fresh, x0r, sigma, noise))
    cfg = TrainConfig(batch_size=8, lr=3e-3, seconds=1e9, max_steps=60, labels=tuple(range(10)))
    ema, log = train_score(data, norm, tx, TAPDIFF, TINY_SUB, cfg, (80, 72), progress=False)
    with torch.no_grad():
        after = float(dsm_loss(build_score_model(tx, ema.model), x0r, sigma, noise))
    assert log["steps"] == 60
    assert after < 0.7 * before, (before, after)


def test_score_training_leaves_the_classifier_frozen():
    data = tiny_data()
    clf = NoiseConditionedClassifier(TINY_CLF)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    cfg = TrainConfig(batch_size=4, seconds=1e9, max_steps=5)
    train_score(data, Normaliser.fit(data.mels), TapExtractor(clf, SDE), TAPDIFF, TINY_SUB, cfg, (80, 72), progress=False)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    assert not any(p.requires_grad for p in clf.parameters())


def _run(tmp_path, name: str, steps: int, monkeypatch, stretch: dict | None = None) -> tuple[dict, dict, int]:
    """train_score up to ``steps`` total steps with state file ``name``: (EMA weights, trained weights, loss calls)."""
    calls = []
    real = score_training.dsm_loss
    monkeypatch.setattr(score_training, "dsm_loss", lambda *a: calls.append(1) or real(*a))
    data = tiny_data()
    torch.manual_seed(0)  # the same frozen classifier in every run
    tx = TapExtractor(NoiseConditionedClassifier(TINY_CLF).eval(), SDE)
    cfg = TrainConfig(batch_size=4, lr=3e-3, seconds=1e9, max_steps=steps, seed=3)
    ema, log = train_score(data, Normaliser.fit(data.mels), tx, TAPDIFF, TINY_SUB, cfg, (80, 72),
                           state_path=tmp_path / name, progress=False, stretch=stretch)
    state = load_state(tmp_path / name)
    assert log["steps"] == steps == state["step"]
    return ema.model.state_dict(), state["model"], len(calls)


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    whole_ema, whole, n_whole = _run(tmp_path, "whole.st", 15, monkeypatch)
    _, _, n_first = _run(tmp_path, "split.st", 10, monkeypatch, {"command": "first"})
    split_ema, split, n_rest = _run(tmp_path, "split.st", 15, monkeypatch, {"command": "resumed"})  # from step 10
    assert (n_whole, n_first, n_rest) == (15, 10, 5)
    # Each stretch is on record with the command that ran it and where it started.
    stretches = load_state(tmp_path / "split.st")["log"]["stretches"]
    assert [(s["command"], s["from_step"]) for s in stretches] == [("first", 0), ("resumed", 10)]
    assert all(s["threads"] == torch.get_num_threads() and s["processes"] == 1 for s in stretches)
    for k in whole:
        assert torch.equal(whole[k], split[k]), k
        assert torch.equal(whole_ema[k], split_ema[k]), k
    # Skipping the resume (5 steps from a fresh start, same seed) gives other weights: the test can fail.
    skipped_ema, skipped, _ = _run(tmp_path, "skipped.st", 5, monkeypatch)
    assert any(not torch.allclose(whole[k], skipped[k]) for k in whole)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["skipped.st", "split.st", "whole.st"]  # no temp files


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    def run():
        model = torch.nn.Linear(2, 1)
        cfg = TrainConfig(batch_size=4, seconds=1e9, max_steps=5)
        return train_loop(model, lambda g: model(torch.randn(4, 2, generator=g)).pow(2).mean(), cfg,
                          tmp_path / "s.st", "t", lambda ema, step, elapsed: {"mark": step}, progress=False)[1]

    first = run()
    on_disk = (tmp_path / "s.st").read_bytes()
    again = run()
    assert [p["step"] for p in first["curve"]] == [p["step"] for p in again["curve"]] == [5]
    assert (tmp_path / "s.st").read_bytes() == on_disk
    # A periodic save on the last step is not followed by a second save of the same step.
    model = torch.nn.Linear(2, 1)
    _, log = train_loop(model, lambda g: model(torch.randn(4, 2, generator=g)).pow(2).mean(),
                        TrainConfig(batch_size=4, seconds=1e9, max_steps=5), tmp_path / "every.st", "t",
                        lambda ema, step, elapsed: {"mark": step}, checkpoint_every_s=-1.0, progress=False)
    assert [p["step"] for p in log["curve"]] == [1, 2, 3, 4, 5]


def test_training_refuses_an_empty_label_set():
    data = tiny_data()
    cfg = TrainConfig(batch_size=4, seconds=1e9, max_steps=1, labels=(9,))
    data.labels[:] = 0
    with pytest.raises(ValueError, match="no training clips"):
        train_score(data, Normaliser.fit(data.mels), TapExtractor(NoiseConditionedClassifier(TINY_CLF), SDE), TAPDIFF,
                    TINY_SUB, cfg, (80, 72), progress=False)


_DDP = r"""
import json, sys, torch
import torch.distributed as dist
from engine.audio.datasets import FeatureSet, Normaliser
from engine.diffusion.taps import TapExtractor
from engine.models.classifier import NoiseConditionedClassifier
from engine.models.registry import SCORE_NETWORKS
from engine.storage.config import ClassifierConfig, SDEConfig, SubnetConfig, TrainConfig
from engine.training.score import train_score
from safetensors.torch import save_file
out, global_batch = sys.argv[1], int(sys.argv[2])
world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
data = FeatureSet(torch.randn(32, 80, 72, generator=g).cumsum(-1) * 0.2 - 6, torch.arange(32) % 10, torch.tensor([[0, 72]] * 32))
tx = TapExtractor(NoiseConditionedClassifier(ClassifierConfig(widths=(8, 8, 16, 16), emb_dim=16)).eval(), SDEConfig())
cfg = TrainConfig(batch_size=global_batch // world, lr=3e-3, seconds=1e9, max_steps=100, seed=3)
ema, log = train_score(data, Normaliser.fit(data.mels), tx, SCORE_NETWORKS["tapdiff"],
                       SubnetConfig(widths=(8, 8, 16, 16), emb_dim=16, heads=2), cfg, (80, 72), progress=False)
save_file(ema.model.state_dict(), f"{out}.rank{rank}")
if rank == 0:
    open(out + ".json", "w").write(json.dumps(log["losses"]))
if world > 1:
    dist.destroy_process_group()
"""


@pytest.mark.slow  # the quick tier (-m "not slow") leaves it out
def test_ddp_under_torchrun_matches_the_single_process_loss_curve_at_equal_global_batch(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(_DDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "16"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the workers share torchrun's store (tests/test_concurrency.py)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                          "--nproc_per_node", "2", str(script), str(tmp_path / "two"), "16"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    r0, r1 = (load_file(str(tmp_path / f"two.rank{r}")) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # gradients averaged: the ranks hold one model
    single, ddp = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert [s for s, *_ in single] == [s for s, *_ in ddp] == [50, 100]
    for (_, _, a), (_, _, b) in zip(single, ddp):  # other batches (per-rank generators), the same curve within noise
        assert abs(a - b) < 0.25 * a, (single, ddp)
    # other draws than the single process's: what matched above is the curve, not a copy of the same run
    assert any(not torch.equal(r0[k], load_file(str(tmp_path / "one.rank0"))[k]) for k in r0)


def test_learning_rate_scales_apply_per_parameter_prefix(tmp_path):
    """Adam's first update moves every parameter by about its learning rate (times the warm-up), so a group at
    10x moves 10x as far; a prefix that names no parameter is refused."""
    from engine.training.distill import condition_parameters
    from engine.training.loop import parameter_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(lr=1e-3, seconds=60, max_steps=1, ema_decay=0.0)
    train_loop(model, lambda gen: (model(x) ** 2).mean(), cfg, None, "t", progress=False, lr_scales={"1.": 10.0})
    moved = [float((p.detach() - b).abs().mean()) for p, b in zip(model.parameters(), before)]
    base = cfg.lr / 200  # the first step of the 200-step warm-up
    assert all(m == pytest.approx(base, rel=0.05) for m in moved[:2])
    assert all(m == pytest.approx(10 * base, rel=0.05) for m in moved[2:])
    with pytest.raises(ValueError, match="no parameter"):
        parameter_groups(model, {"2.": 10.0})
    student = SCORE_NETWORKS["tapdiff-distilled"].build(SubnetConfig(label_classes=10), (8, 8, 16, 16), (80, 72))
    prefixes = condition_parameters(student)
    assert prefixes[0] == "cond_embed." and len(prefixes) > 4 and all(p.endswith("film.") for p in prefixes[1:])


def test_max_steps_trains_a_fixed_amount_whatever_the_machines_speed(tiny_checkpoint):
    """The suite's tiny checkpoint is trained with ``--max-steps`` under a generous ``--seconds`` cap: the same
    number of optimiser steps on a fast or a loaded machine, recorded."""
    training = json.loads((tiny_checkpoint / "config.json").read_text())["training"]
    assert training["classifier"]["steps"] == 60 and training["score_subnet"]["steps"] == 25
    assert training["score_subnet"]["config"]["max_steps"] == 25 and training["score_subnet"]["seconds"] < 60
