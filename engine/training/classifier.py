"""Train the noise-conditioned classifier with cross-entropy on x_t across the whole sigma range."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..audio.datasets import FeatureSet, Normaliser, shift_in_time, silence_frame
from ..diffusion.sde import perturb, precondition, sample_classifier_sigma
from ..models.classifier import NoiseConditionedClassifier
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


def train_classifier(train: FeatureSet, norm: Normaliser, log_floor: float, model_cfg: ClassifierConfig, sde: SDEConfig,
                     cfg: TrainConfig, state_path: Path | None = None, test: FeatureSet | None = None,
                     progress: bool = True):
    torch.manual_seed(cfg.seed)
    model = NoiseConditionedClassifier(model_cfg)
    x_all = norm.normalise(train.mels)
    silence = silence_frame(norm, log_floor)
    x_test = norm.normalise(test.mels)[:, None] if test is not None else None

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        x0 = x_all[idx]
        if cfg.time_shift:
            x0 = shift_in_time(x0, train.spans[idx], silence, gen)
        sigma = sample_classifier_sigma(cfg.batch_size, sde, gen)
        x_t = perturb(x0[:, None], sigma, torch.randn(x0[:, None].shape, generator=gen))
        _, _, c_in, c_noise = precondition(sigma, sde)
        return F.cross_entropy(model(c_in * x_t, c_noise), train.labels[idx])

    def on_checkpoint(ema, step, elapsed):
        if x_test is None:
            return None
        model.train()  # accuracy_by_sigma switches the EMA copy to eval, never the trained model
        return {"test_accuracy": accuracy_by_sigma(ema.model, x_test, test.labels, sde, sigmas=(0.0, 1.0, 5.0))}

    ema, log = train_loop(model, loss_fn, cfg, state_path, "classifier", on_checkpoint, progress=progress)
    return ema.model, log
