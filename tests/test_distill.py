"""Distillation (``tapdiff distill``): a student that takes the label and gamma as inputs, starts as its
teacher, learns from the guided teacher's ODE trajectories, resumes, and samples with ``multistep`` in the
bundle's own sampling entry; for tapdiff without a guidance cotangent, for the two-model pipeline without
the classifier."""
import dataclasses
import json
import shutil

import pytest
import torch

from engine.api import Engine
from engine.bundle import load_bundle
from engine.cli import main
from engine.diffusion.score_model import DistilledDenoiser, build_score_model, score_model
from engine.diffusion.taps import TapExtractor, onehot
from engine.errors import CheckpointError
from engine.models.registry import score_network_kind
from engine.training.distill import (UNCONDITIONAL, TrajectorySettings, Trajectories, distillation_loss,
                                     draw_conditions, init_from_teacher, teacher_trajectories)

TINY = ["--trajectories", "12", "--teacher-steps", "4", "--held-out", "4", "--max-steps", "20", "--seconds", "60",
        "--snapshot-every", "1"]


@pytest.fixture(scope="module")
def distilled(tiny_with_baselines, tmp_path_factory):
    """A copy of the tiny bundle with both students distilled for seconds through the CLI."""
    ck = tmp_path_factory.mktemp("distilled") / "ck"
    shutil.copytree(tiny_with_baselines, ck)
    for model in ("tapdiff-distilled", "two-model-distilled"):
        assert main(["distill", "--checkpoint", str(ck), "--model", model, *TINY]) == 0
    return ck


def test_a_new_student_is_its_teacher_unguided(tiny_with_baselines):
    bundle = load_bundle(tiny_with_baselines, model="tapdiff")
    kind = score_network_kind("tapdiff-distilled")
    net = kind.build(dataclasses.replace(bundle.score_net.cfg, label_classes=10), bundle.classifier.tap_channels,
                     bundle.input_hw)
    init_from_teacher(net, bundle.score_net)
    student = build_score_model(TapExtractor(bundle.classifier, bundle.sde), net).eval()
    teacher = score_model(bundle)
    assert isinstance(student, DistilledDenoiser)
    x, sigma = torch.randn(3, 1, *bundle.input_hw) * 2, torch.tensor([0.1, 1.0, 10.0])
    oh, gamma = onehot(torch.tensor([1, 7, 1]), 10), torch.tensor([3.0, 1.0, 0.0])
    with torch.no_grad():
        assert torch.allclose(student(x, sigma, oh, gamma), teacher(x, sigma), rtol=1e-3, atol=1e-4)  # one cotangent vs two: last bits
        torch.nn.init.normal_(net.cond_embed.mlp[-1].weight)  # once the condition embedding has learned,
        other = onehot(torch.tensor([7, 1, 7]), 10)  # labels and gamma matter
        assert not torch.equal(student(x, sigma, oh, gamma), student(x, sigma, other, gamma))
        assert not torch.equal(student(x, sigma, oh, gamma), student(x, sigma, oh, gamma + 1))


def test_guided_taps_carry_the_guidance_cotangent_in_one_pass(tiny_with_baselines):
    """A student on guided taps: its one cotangent gives the JEM taps plus gamma times the guidance gradient at
    every depth (the backward is linear in its cotangent), the JEM taps alone without a label or at gamma 0, and
    starts as its teacher unguided wherever gamma is 0."""
    from engine.diffusion.sde import precondition

    bundle = load_bundle(tiny_with_baselines, model="tapdiff")
    tx = TapExtractor(bundle.classifier, bundle.sde)
    x, sigma = torch.randn(3, 1, *bundle.input_hw) * 2, torch.tensor([0.1, 1.0, 10.0])
    oh, gamma = onehot(torch.tensor([1, 7, 1]), 10), torch.tensor([3.0, 1.5, 0.0])
    oh[1] = 0  # the second row has no label: no guidance term whatever its gamma
    steered = tx.steered(x, sigma, oh, gamma)
    _, _, c_in, c_noise = precondition(sigma, bundle.sde)

    def adjoint(cotangent_of):  # one cotangent's tap gradients and input gradient, from a fresh forward
        fp = bundle.classifier.forward_with_tape(c_in * x, c_noise)
        grads, g_in = bundle.classifier.adjoint(fp, cotangent_of(torch.softmax(fp.logits, -1))[None])
        return grads, g_in[0]

    (jem, jem_in), (guide, guide_in) = adjoint(lambda p: p), adjoint(lambda p: oh - p)
    weight = torch.tensor([3.0, 0.0, 0.0])[:, None, None, None]
    for g, h, s in zip(jem, guide, steered.grads):
        assert torch.allclose(s, g + weight * h, rtol=1e-4, atol=1e-6)
    assert torch.allclose(steered.input_grad, (jem_in + weight * guide_in) * c_in, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(steered.grads[0][0], tx(x, sigma).grads[0][0], atol=1e-6)  # the label reached the taps
    kind = score_network_kind("tapdiff-distilled")
    net = kind.build(dataclasses.replace(bundle.score_net.cfg, label_classes=10, guided_taps=True),
                     bundle.classifier.tap_channels, bundle.input_hw)
    init_from_teacher(net, bundle.score_net)
    student = build_score_model(tx, net).eval()
    with torch.no_grad():
        same = student(x, sigma, oh, gamma)[1:]  # rows without a guidance term
        assert torch.allclose(same, score_model(bundle)(x, sigma)[1:], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="guided_taps"):
        dataclasses.replace(bundle.score_net.cfg, guided_taps=True)  # a teacher takes no label


@pytest.mark.core
def test_conditions_mix_unconditional_default_and_spread_gamma():
    settings = TrajectorySettings(count=4000)
    labels, gammas = draw_conditions(4000, (1, 7), settings, torch.Generator().manual_seed(0))
    uncond = labels == UNCONDITIONAL
    assert 0.17 < float(uncond.float().mean()) < 0.23 and torch.all(gammas[uncond] == 0)
    assert 0.37 < float((gammas == 3.0).float().mean()) < 0.43
    assert set(labels[~uncond].tolist()) == {1, 7} and float(gammas.max()) <= settings.gamma_max


def test_trajectories_are_the_teachers_guided_ode_and_resume_from_their_chunks(tiny_with_baselines, tmp_path):
    bundle = load_bundle(tiny_with_baselines, model="tapdiff")
    teacher = score_model(bundle)
    settings = TrajectorySettings(count=6, steps=3, chunk=4)
    data, seconds = teacher_trajectories(teacher, bundle.labels, settings, bundle.input_hw, tmp_path, "t", progress=False)
    assert data.states.shape == (6, 3, 1, *bundle.input_hw) and seconds > 0
    assert torch.allclose(data.sigmas[0], torch.tensor(bundle.sde.sigma_max))
    # the last state's denoised estimate is the endpoint (DPM-Solver++(2M)'s lower-order final step)
    oh = onehot(data.labels.clamp_min(0), 10) * (data.labels >= 0).float()[:, None]
    with torch.no_grad():
        last = teacher(data.states[:, -1], data.sigmas[-1].expand(6), oh, data.gammas)
    assert torch.allclose(last, data.endpoints, atol=1e-4)
    again, seconds_again = teacher_trajectories(teacher, bundle.labels, settings, bundle.input_hw, tmp_path, "t",
                                                progress=False)
    assert torch.equal(again.endpoints, data.endpoints) and seconds_again == pytest.approx(seconds)
    with pytest.raises(CheckpointError, match="another teacher or other settings"):
        teacher_trajectories(teacher, bundle.labels, settings, bundle.input_hw, tmp_path, "another", progress=False)


def test_distillation_loss_falls_when_the_student_learns_the_endpoints(tiny_with_baselines):
    bundle = load_bundle(tiny_with_baselines, model="two-model")
    kind = score_network_kind("two-model-distilled")
    net = kind.build(dataclasses.replace(bundle.score_net.cfg, label_classes=10), (), bundle.input_hw)
    init_from_teacher(net, bundle.score_net)
    student = build_score_model(TapExtractor(bundle.classifier, bundle.sde), net)
    g = torch.Generator().manual_seed(0)
    n = 8
    data = Trajectories(torch.randn(n, 2, 1, *bundle.input_hw, generator=g), torch.tensor([5.0, 0.5]),
                        torch.randn(n, 1, *bundle.input_hw, generator=g), torch.tensor([1, 7] * 4),
                        torch.rand(n, generator=g) * 4)
    idx, level = torch.arange(n), torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = float(distillation_loss(student, data, idx, level).detach())
    for _ in range(30):
        loss = distillation_loss(student, data, idx, level)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(distillation_loss(student, data, idx, level)) < 0.7 * first


def test_distill_writes_the_students_with_their_own_sampling_entry(distilled, tiny_with_baselines):
    cfg = json.loads((distilled / "config.json").read_text())
    teachers = json.loads((tiny_with_baselines / "config.json").read_text()).get("sampling", {})
    for model, weights in (("tapdiff-distilled", "score_subnet_distilled"), ("two-model-distilled", "unet_distilled")):
        assert f"{weights}.safetensors" in cfg["files"] and cfg[f"{weights}_config"]["label_classes"] == 10
        record = cfg["training"][weights]
        assert record["teacher"] == score_network_kind(model).teacher and record["trajectories"]["count"] == 12
        assert record["trajectories"]["seconds"] > 0 and record["steps"] > 0 and record["curve"]
        assert "heldout" in record["curve"][-1] and record["command"].startswith("tapdiff distill")
        assert cfg["sampling"]["models"][model]["sampler"] == "multistep"
    assert cfg["score_subnet_distilled_config"]["guided_taps"] and "guided_taps" not in cfg["unet_distilled_config"]
    assert {k: v for k, v in cfg["sampling"].items() if k != "models"} == teachers  # the teachers' is untouched
    assert Engine(distilled).default_sampler == Engine(tiny_with_baselines).default_sampler


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_students_generate_in_four_evaluations_without_a_guidance_cotangent(distilled, backend, monkeypatch):
    eng = Engine(distilled, model="tapdiff-distilled", backend=backend)
    assert eng.default_sampler.solver == "multistep" and eng.default_sampler.nfe == 4
    cotangents = []
    adjoint = type(eng.bundle.classifier).adjoint

    def spy(self, fp, cot, *a, **k):
        cotangents.append(cot.shape[0])
        return adjoint(self, fp, cot, *a, **k)

    monkeypatch.setattr(type(eng.bundle.classifier), "adjoint", spy)
    out = eng.generate([1, 7], n=2, seed=0)
    assert out.mels.shape == (4, *eng.bundle.input_hw) and torch.isfinite(out.waves).all()
    if backend == "torch":
        assert cotangents == [1] * 4  # one batch, four evaluations, each with one cotangent (guided taps)
    else:  # the exported graph, guided taps included, gives eager torch's clips
        eager = Engine(distilled, model="tapdiff-distilled", backend="torch").generate([1, 7], n=2, seed=0).mels
        assert torch.allclose(out.mels, eager, rtol=1e-3, atol=1e-3)
    two = Engine(distilled, model="two-model-distilled", backend="torch")
    monkeypatch.setattr(type(two.bundle.classifier), "adjoint", lambda *a, **k: pytest.fail("classifier ran"))
    assert torch.isfinite(two.generate([7], n=2, seed=1).mels).all()


def test_rerunning_distill_resumes_and_train_score_refuses_a_student(distilled, fsdd_root):
    before = json.loads((distilled / "config.json").read_text())["training"]["score_subnet_distilled"]
    assert main(["distill", "--checkpoint", str(distilled), *TINY[:-6], "--max-steps", "30", "--seconds", "60",
                 "--snapshot-every", "1"]) == 0
    after = json.loads((distilled / "config.json").read_text())["training"]["score_subnet_distilled"]
    assert (before["steps"], after["steps"]) == (20, 30) and len(after["stretches"]) == 2
    assert after["trajectories"]["seconds"] == before["trajectories"]["seconds"]  # chunks reused, none regenerated
    assert main(["train-score", "--checkpoint", str(distilled), "--model", "tapdiff-distilled", "--seconds", "1",
                 "--data", str(fsdd_root)]) == 2


def test_a_bad_per_model_sampling_entry_is_named(distilled, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(distilled, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["sampling"]["models"]["tapdiff-distilled"]["steps"] = "four"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="sampling.models.tapdiff-distilled.steps"):
        Engine(ck, model="tapdiff-distilled")


def test_the_default_model_is_the_student_only_once_it_met_the_rule(distilled, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(distilled, ck)
    assert Engine(ck).model_name == "tapdiff"  # distilled, but no verdict recorded
    cfg = json.loads((ck / "config.json").read_text())
    for verdict, model in ((False, "tapdiff"), (True, "tapdiff-distilled")):
        cfg["sampling"]["models"]["tapdiff-distilled"]["meets_default_rule"] = verdict
        (ck / "config.json").write_text(json.dumps(cfg))
        assert Engine(ck).model_name == model
    assert main(["generate", "--checkpoint", str(ck), "--digit", "7", "-n", "1", "--out", str(tmp_path / "o"),
                 "--backend", "torch", "--quiet"]) == 0
    cfg["sampling"]["models"]["tapdiff-distilled"]["meets_default_rule"] = "yes"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="meets_default_rule"):
        Engine(ck)


@pytest.mark.core
def test_the_quality_rule_compares_means_beyond_the_seed_spread():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from distill_quality import verdict

    teacher = {"recognised": 0.97, "fd": 65.0, "recognised_spread": 0.02, "fd_spread": 4.0}
    close = {"recognised": 0.955, "fd": 68.0, "recognised_spread": 0.01, "fd_spread": 1.0}
    assert verdict(teacher, close)["meets_rule"]
    assert not verdict(teacher, {**close, "recognised": 0.94})["meets_rule"]  # 0.03 below, spread 0.02
    assert verdict(teacher, {**close, "fd": 70.0})["fd_ok"] is False
    assert verdict(teacher, {**close, "fd": 70.0, "fd_spread": 6.0})["meets_rule"]  # the student's own spread counts


def test_distill_quality_writes_its_table_and_the_students_entry(distilled, fsdd_root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ck = tmp_path / "ck"
    shutil.copytree(distilled, ck, ignore=shutil.ignore_patterns("state"))
    out, js = tmp_path / "q.md", tmp_path / "q.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "distill_quality.py"), "--checkpoint", str(ck), "--data",
                    str(fsdd_root), "-n", "1", "--seeds", "0,1", "--steps", "2,3", "--rhos", "sde", "--out", str(out),
                    "--json", str(js), "--write"], check=True, capture_output=True, cwd=root)
    text = out.read_text()
    assert text.startswith("Command: `python benchmarks/distill_quality.py") and "| tapdiff (teacher) |" in text
    assert "### two-model-distilled" in text and "multistep (3 steps, 3 NFE)" in text
    systems = json.loads(js.read_text())["systems"]
    assert [len(s["students"]) for s in systems] == [2, 2] and all(len(r["per_seed"]) == 2 for r in systems[0]["students"])
    entry = json.loads((ck / "config.json").read_text())["sampling"]["models"]["tapdiff-distilled"]
    assert entry["steps"] in (2, 3) and isinstance(entry["meets_default_rule"], bool)
    assert Engine(ck).model_name == ("tapdiff-distilled" if entry["meets_default_rule"] else "tapdiff")
