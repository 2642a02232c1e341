"""The two-model baseline (U-Net + classifier guidance) and the x_t-only ablation run through the same
denoiser wrapper, score-model factory, solvers, guidance and DSM code as tapdiff."""
import pytest
import torch

from engine.api import Engine
from engine.cli import main
from engine.diffusion.denoiser import EDMDenoiser
from engine.diffusion.score_model import PlugInDenoiser, build_score_model
from engine.diffusion.taps import TapExtractor, onehot
from engine.models.classifier import NoiseConditionedClassifier
from engine.models.unet import UNet
from engine.storage.config import UNetConfig
from engine.storage.config import ClassifierConfig, SDEConfig

SDE = SDEConfig(sigma_min=0.005, sigma_max=80.0)


def test_unet_starts_as_the_preconditioned_identity_and_keeps_shapes():
    denoiser = EDMDenoiser(UNet(UNetConfig(widths=(8, 16, 16, 24), heads=2, emb_dim=16)), SDE)
    x, s = torch.randn(2, 1, 80, 72), torch.tensor([0.3, 5.0])
    c_skip = 1.0 / (s ** 2 + 1.0)
    assert torch.allclose(denoiser(x, s), c_skip.reshape(-1, 1, 1, 1) * x)  # zero-initialised output
    assert not denoiser.uses_taps


def test_separate_guidance_pass_equals_the_stacked_one():
    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), emb_dim=16))
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tx = TapExtractor(clf.eval(), SDE)
    x, s, y = torch.randn(3, 1, 80, 72), torch.tensor([0.1, 1.0, 9.0]), onehot(torch.tensor([2, 5, 9]), 10)
    stacked, alone = tx(x, s, y).class_gradient, tx.class_gradient(x, s, y)
    assert torch.allclose(stacked, alone, rtol=1e-5, atol=1e-9)
    unet = UNet(UNetConfig(widths=(8, 16, 16, 24), heads=2, emb_dim=16))
    model = build_score_model(tx, unet)
    assert isinstance(model, PlugInDenoiser)
    gamma = torch.tensor([3.0, 3.0, 0.5])
    with torch.no_grad():
        d = model.denoiser(x, s)
        assert torch.allclose(model(x, s, y, gamma), d + (gamma * s ** 2).reshape(-1, 1, 1, 1) * alone,
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["two-model", "ablation"])
def test_baselines_generate_through_the_engine(tiny_with_baselines, model):
    engine = Engine(tiny_with_baselines, model=model)
    a = engine.generate(7, n=2, steps=3, seed=1)
    b = engine.generate(7, n=2, steps=3, seed=1)
    assert a.waves.shape == (2, 72 * 160) and torch.equal(a.mels, b.mels)
    assert isinstance(engine.torch_denoiser, PlugInDenoiser)


def test_model_choice_errors_are_named(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown model"):
        Engine(tiny_checkpoint, model="gan")
    with pytest.raises(SystemExit):  # argparse: not one of the registry's names
        main(["train-score", "--checkpoint", str(tiny_checkpoint), "--model", "unet", "--seconds", "1"])
    assert "invalid choice: 'unet'" in capsys.readouterr().err


def test_score_model_data_regime_restricts_generation(tiny_checkpoint, tmp_path, fsdd_root):
    import shutil

    ck = tmp_path / "regime"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    args = ["train-score", "--checkpoint", str(ck), "--seconds", "60", "--max-steps", "3", "--widths", "8,8,16,16",
            "--heldout-clips", "0", "--data", str(fsdd_root)]
    assert main([*args, "--digit", "3"]) == 2  # not a label of the classifier (1, 7)
    assert main([*args, "--digit", "7"]) == 0
    engine = Engine(ck)
    assert engine.labels == (7,)
    with pytest.raises(ValueError, match="unknown digit 1"):
        engine.generate(1, steps=1)
