"""Train the noise-conditioned classifier with cross-entropy on x_t across the whole sigma range."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from ..audio.datasets import FeatureSet, Normaliser, shift_in_time, silence_frame
from ..diffusion.sde import perturb, precondition, sample_classifier_sigma
from ..models.classifier import ChannelNorm, NoiseConditionedClassifier
from ..storage.config import ClassifierConfig, SDEConfig, TrainConfig
from .loop import train_loop

EVAL_SIGMAS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 40.0)


@torch.no_grad()
def accuracy_by_sigma(model: NoiseConditionedClassifier, x0: torch.Tensor, labels: torch.Tensor, sde: SDEConfig,
                      sigmas=EVAL_SIGMAS, seed: int = 1234) -> dict[float, float]:
    """Test accuracy with x_t = x_0 + sigma * n at fixed sigma (0 means clean, evaluated at sigma_min)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        sig = torch.full((len(x0),), max(s, sde.sigma_min))
        x_t = perturb(x0, sig, torch.randn(x0.shape, generator=gen))
        _, _, c_in, c_noise = precondition(sig, sde)
        pred = torch.cat([model(c_in[i:i + 256] * x_t[i:i + 256], c_noise[i:i + 256]).argmax(-1) for i in range(0, len(x0), 256)])
        out[s] = float((pred == labels).float().mean())
    return out


def classification_loss(model: NoiseConditionedClassifier, train: FeatureSet, norm: Normaliser, log_floor: float,
                        sde: SDEConfig, cfg: TrainConfig):
    """The classifier's objective as a ``train_loop`` loss: cross-entropy on x_t of a random batch (time-shifted
    where ``cfg.time_shift``), sigma drawn across the whole range."""
    x_all = norm.normalise(train.mels)
    silence = silence_frame(norm, log_floor)

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        x0 = x_all[idx]
        if cfg.time_shift:
            x0 = shift_in_time(x0, train.spans[idx], silence, gen)
        sigma = sample_classifier_sigma(cfg.batch_size, sde, gen)
        x_t = perturb(x0[:, None], sigma, torch.randn(x0[:, None].shape, generator=gen))
        _, _, c_in, c_noise = precondition(sigma, sde)
        return F.cross_entropy(model(c_in * x_t, c_noise), train.labels[idx])

    return loss_fn


def accuracy_on_checkpoint(model: NoiseConditionedClassifier, test: FeatureSet | None, norm: Normaliser,
                             sde: SDEConfig):
    """The ``on_checkpoint`` of classifier training: the EMA copy's test accuracy at sigma 0, 1 and 5."""
    if test is None:
        return None
    x_test = norm.normalise(test.mels)[:, None]

    def on_checkpoint(ema, step, elapsed):
        model.train()  # accuracy_by_sigma switches the EMA copy to eval, never the trained model
        return {"test_accuracy": accuracy_by_sigma(ema.model, x_test, test.labels, sde, sigmas=(0.0, 1.0, 5.0))}

    return on_checkpoint


def train_classifier(train: FeatureSet, norm: Normaliser, log_floor: float, model_cfg: ClassifierConfig, sde: SDEConfig,
                     cfg: TrainConfig, state_path: Path | None = None, test: FeatureSet | None = None,
                     progress: bool = True):
    torch.manual_seed(cfg.seed)
    model = NoiseConditionedClassifier(model_cfg)
    ema, log = train_loop(model, classification_loss(model, train, norm, log_floor, sde, cfg), cfg, state_path,
                          "classifier", accuracy_on_checkpoint(model, test, norm, sde), progress=progress)
    return ema.model, log


def normalisation_parameters(model: NoiseConditionedClassifier) -> list[torch.nn.Parameter]:
    """The classifier's normalisation layers' parameters (every ChannelNorm's per-channel scale and shift)."""
    return [p for m in model.modules() if isinstance(m, ChannelNorm) for p in m.parameters()]


def adapt_normalisation(model: NoiseConditionedClassifier, train: FeatureSet, norm: Normaliser, log_floor: float,
                        sde: SDEConfig, cfg: TrainConfig, state_path: Path | None = None,
                        test: FeatureSet | None = None, progress: bool = True):
    """Fine-tune nothing but ``model``'s normalisation layers on ``train`` with the classifier's own objective (a
    cheap adaptation that keeps the one backbone: every convolution, FiLM and the head stay as trained). Returns
    the EMA copy, with every other parameter bit-identical to ``model``'s, and the training log."""
    model = copy.deepcopy(model).train()
    model.requires_grad_(False)
    for p in normalisation_parameters(model):
        p.requires_grad_(True)  # the optimiser skips parameters without gradients
    ema, log = train_loop(model, classification_loss(model, train, norm, log_floor, sde, cfg), cfg, state_path,
                          "adapt", accuracy_on_checkpoint(model, test, norm, sde), progress=progress)
    return ema.model.requires_grad_(False), log
