"""Distribution-matching distillation (engine.training.dmd) on the shipped bundle's teacher and student."""
from __future__ import annotations

import pytest
import torch

from engine.bundle import load_bundle
from engine.diffusion.score_model import build_score_model, score_model
from engine.models.registry import score_network_kind
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
from engine.storage.config import from_dict
from engine.training.dmd import DMDSettings, DMDTrainer, dmd_sigma, fake_network

KIND = score_network_kind("tapdiff-distilled")


def _trainer(settings: DMDSettings, real=None) -> DMDTrainer:
    tb = load_bundle(DEFAULT_CHECKPOINT, model="tapdiff")
    sb = load_bundle(DEFAULT_CHECKPOINT, model=KIND.name)
    teacher = score_model(tb)
    generator = build_score_model(teacher.extractor, sb.score_net.train().requires_grad_(True))
    cfg = from_dict(KIND.config_cls, sb.config[KIND.config_key])
    fake = fake_network(lambda c: KIND.build(c, tb.classifier.tap_channels, tb.input_hw), cfg, tb.score_net)
    return DMDTrainer(teacher, generator, fake, tb.labels, tb.input_hw, settings, real)


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_the_fake_score_starts_as_the_unguided_teacher_and_shares_its_taps():
    t = _trainer(DMDSettings(batch_size=2))
    x, sigma = torch.randn(3, 1, *t.input_hw) * 2, torch.tensor([0.1, 1.0, 20.0])
    oh, gamma = torch.eye(10)[[1, 4, 7]], torch.tensor([3.0, 0.0, 6.0])
    with torch.no_grad():
        unguided = t.teacher(x, sigma)
        assert torch.equal(t.fake(x, sigma, torch.zeros(3, 10), torch.zeros(3)), unguided)
        real, fake = t.real_and_fake(x, sigma, oh, gamma)  # one classifier pass for both
        torch.testing.assert_close(real, t.teacher(x, sigma, oh, gamma), rtol=0, atol=1e-5)
        torch.testing.assert_close(fake, t.fake(x, sigma, oh, gamma), rtol=0, atol=1e-5)
    assert not torch.equal(real, unguided)  # gamma > 0 rows are guided


def test_levels_follow_dmd2s_timestep_range():
    t = _trainer(DMDSettings(batch_size=2))
    s = dmd_sigma(4000, t.sde, 0.02, 0.98, torch.Generator().manual_seed(0))
    assert t.sde.sigma_min < float(s.min()) and float(s.max()) < t.sde.sigma_max
    inv = 1 / t.sde.rho
    at_half = (0.5 * (t.sde.sigma_max ** inv + t.sde.sigma_min ** inv)) ** t.sde.rho  # u = 0.5 of the index
    assert abs(float(s.median()) / at_half - 1) < 0.05
    assert t.levels.tolist()[-1] == 0 and len(t.levels) == t.settings.steps + 1


def test_the_generator_moves_only_after_warmup_and_every_kth_iteration():
    t = _trainer(DMDSettings(batch_size=2, warmup=2, fake_updates=2))
    g0, f0 = _flat(t.generator.denoiser.net), _flat(t.fake.denoiser.net)
    moved = []
    for _ in range(5):
        before = _flat(t.generator.denoiser.net)
        out = t.iteration_step()
        moved.append(not torch.equal(before, _flat(t.generator.denoiser.net)))
        assert ("g_loss" in out) == moved[-1] and torch.isfinite(torch.tensor(out["fake_loss"]))
    assert moved == [False, False, True, False, True]
    assert t.g_updates == 2 and t.iteration == 5
    assert not torch.equal(f0, _flat(t.fake.denoiser.net))
    assert not torch.equal(_flat(t.ema.model), g0)  # the EMA follows G


def test_a_resumed_run_continues_exactly(tmp_path):
    settings = DMDSettings(batch_size=2, warmup=1, fake_updates=2)
    a = _trainer(settings)
    path = tmp_path / "dmd.state.safetensors"
    a.train(seconds=1e9, max_g_updates=1, state_path=path)  # 2 iterations: the warm-up, then G's first update
    assert a.g_updates == 1 and path.exists()
    b = _trainer(settings)
    b.resume(path)
    a.iteration_step(), b.iteration_step()
    a.iteration_step(), b.iteration_step()
    assert a.g_updates == b.g_updates == 2
    assert torch.equal(_flat(a.generator.denoiser.net), _flat(b.generator.denoiser.net))
    assert torch.equal(_flat(a.fake.denoiser.net), _flat(b.fake.denoiser.net))
    c = _trainer(DMDSettings(batch_size=2, warmup=1, fake_updates=3))
    with pytest.raises(Exception, match="other DMD settings"):
        c.resume(path)


def test_the_gan_term_trains_its_head_and_reaches_the_generator_through_the_classifier(fsdd_root, tmp_path):
    """With ``gan_weight`` > 0 the head (on the frozen classifier's deepest taps) is trained on real clips against
    the generator's samples, its loss reaches the generator (the generator's step differs from the run without
    it), and its weights and optimiser resume with the rest."""
    from engine.audio.datasets import list_items, load_features

    tb = load_bundle(DEFAULT_CHECKPOINT, model=None)
    clips = load_features(list_items(fsdd_root, "train", (3, 7))[:8], tb.features)
    real = (tb.normaliser.normalise(clips.mels)[:, None], clips.labels)
    with_gan = DMDSettings(batch_size=2, warmup=0, fake_updates=1, gan_weight=1.0)
    a = _trainer(with_gan, real)
    b = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1))
    head0 = _flat(a.disc)
    out = a.iteration_step()
    b.iteration_step()
    assert "disc_loss" in out and not torch.equal(head0, _flat(a.disc))
    assert not torch.equal(_flat(a.generator.denoiser.net), _flat(b.generator.denoiser.net))
    assert all(not p.requires_grad for p in a.teacher.extractor.classifier.parameters())
    path = tmp_path / "gan.state.safetensors"
    a.checkpoint(path)
    c = _trainer(with_gan, real)
    c.resume(path)
    assert torch.equal(_flat(c.disc), _flat(a.disc))
    with pytest.raises(ValueError, match="needs real clips"):
        _trainer(with_gan)


def test_the_recognition_term_reaches_the_generator_only_through_labelled_rows():
    """DMOSpeech's recognition loss: the frozen training classifier's cross-entropy at the generator's lightly
    re-noised sample. It is low for a clip of the right label and high for another label, it reaches the
    generator (its step differs from the run without it), unlabelled rows add nothing, and the record names it
    only when it is on (runs without it resume as before)."""
    t = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1, recognition_weight=1.0))
    oh, gamma = t.conditions(4)
    oh[:] = 0
    oh[:, 3] = 1.0
    x = torch.randn(4, 1, *t.input_hw, generator=torch.Generator().manual_seed(0)) * t.levels[0]
    with torch.no_grad():
        for j in range(t.settings.steps):  # the student samples 4 clips of label 3
            x0 = t.generator(x, t.levels[j].expand(4), oh, torch.full((4,), 3.0))
            x = x0 + t.levels[j + 1] * torch.randn(x.shape, generator=t.gen)
    right = t.recognition_loss(x0, oh)
    wrong = t.recognition_loss(x0, torch.roll(oh, 1, dims=1))  # label 4 asked of clips of 3
    assert float(right) < 1.0 < float(wrong)
    assert float(t.recognition_loss(x0, torch.zeros_like(oh))) == 0.0
    a = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1, recognition_weight=1.0))
    b = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1))
    a.iteration_step(), b.iteration_step()
    assert not torch.equal(_flat(a.generator.denoiser.net), _flat(b.generator.denoiser.net))
    assert "recognition_weight" in a.settings.record() and "recognition_weight" not in b.settings.record()


def test_a_run_can_start_from_another_runs_state_with_other_settings(tmp_path):
    """``start_from``: the networks and optimisers of a run written with other settings, this run's learning
    rates, counters and curve afresh; a state that does not fit is refused by name."""
    a = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1))
    a.iteration_step()
    path = tmp_path / "a.state.safetensors"
    a.checkpoint(path)
    b = _trainer(DMDSettings(batch_size=2, warmup=0, fake_updates=1, recognition_weight=0.5, generator_lr=1e-6))
    with pytest.raises(Exception, match="other DMD settings"):
        b.resume(path)
    origin = b.start_from(path)
    assert origin["g_updates"] == 1 and origin["settings"] == a.settings.record() and not origin["gan_head"]
    assert torch.equal(_flat(b.generator.denoiser.net), _flat(a.generator.denoiser.net))
    assert torch.equal(_flat(b.ema.model), _flat(a.ema.model))
    assert torch.equal(_flat(b.fake.denoiser.net), _flat(a.fake.denoiser.net))
    assert b.g_updates == 0 and b.g_opt.param_groups[0]["lr"] == 1e-6
    assert b.g_opt.state_dict()["state"].keys() == a.g_opt.state_dict()["state"].keys()
    bad = tmp_path / "bad.state.safetensors"
    bad.write_bytes(b"not a state")
    with pytest.raises(Exception, match="bad.state"):
        b.start_from(bad)


def test_the_two_model_student_trains_the_same_way():
    """The two-model pipeline's student against its guided U-Net teacher: the fake score is a U-Net copy, G and the
    fake both move, and the GAN and recognition terms read the two-model pipeline's own classifier."""
    kind = score_network_kind("two-model-distilled")
    tb = load_bundle(DEFAULT_CHECKPOINT, model=kind.teacher)
    sb = load_bundle(DEFAULT_CHECKPOINT, model=kind.name)
    teacher = score_model(tb)
    assert not teacher.uses_taps
    generator = build_score_model(teacher.extractor, sb.score_net.train().requires_grad_(True))
    cfg = from_dict(kind.config_cls, sb.config[kind.config_key])
    fake = fake_network(lambda c: kind.build(c, tb.classifier.tap_channels, tb.input_hw), cfg, tb.score_net)
    x = torch.randn(4, 1, *tb.input_hw)
    real = (x, torch.tensor([1, 3, 5, 7]))
    t = DMDTrainer(teacher, generator, fake, tb.labels, tb.input_hw,
                   DMDSettings(batch_size=2, warmup=0, fake_updates=1, gan_weight=0.01, recognition_weight=0.002), real)
    g0, f0 = _flat(t.generator.denoiser.net), _flat(t.fake.denoiser.net)
    out = t.iteration_step()
    assert {"g_loss", "fake_loss", "disc_loss"} <= set(out) and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert not torch.equal(g0, _flat(t.generator.denoiser.net)) and not torch.equal(f0, _flat(t.fake.denoiser.net))
