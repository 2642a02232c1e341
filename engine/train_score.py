"""Train ScoreSubnet by denoising score matching (EDM weighting) with the classifier frozen."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .config import SDEConfig, SubnetConfig, TrainConfig
from .data import FeatureSet, Normaliser
from .score_subnet import ScoreSubnet
from .sde import loss_weight, perturb, sample_training_sigma
from .taps import TapExtractor
from .unet import UNet, UNetConfig
from .training import EMA, train_loop


def dsm_loss(model: torch.nn.Module, extractor: TapExtractor | None, x0: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor, sde: SDEConfig) -> torch.Tensor:
    """lambda(sigma) * ||D(x0 + sigma n, sigma) - x0||^2, mean over batch and elements. ``model`` is any
    EDM denoiser with ``denoise(x_t, sigma, taps)`` and ``uses_taps`` (ScoreSubnet, its ablation, the U-Net)."""
    x_t = perturb(x0, sigma, noise)
    taps = None
    if model.uses_taps:
        with torch.no_grad():
            taps = extractor(x_t, sigma)
    err = (model.denoise(x_t, sigma, taps) - x0) ** 2
    return (loss_weight(sigma, sde) * err.mean(dim=(1, 2, 3))).mean()


def build_score_model(model_cfg: SubnetConfig | UNetConfig, sde: SDEConfig, tap_channels: tuple[int, ...],
                      input_hw: tuple[int, int]) -> torch.nn.Module:
    if isinstance(model_cfg, UNetConfig):
        return UNet(model_cfg, sde)
    return ScoreSubnet(model_cfg, sde, tap_channels, input_hw)


def train_score(train: FeatureSet, norm: Normaliser, extractor: TapExtractor | None, model_cfg: SubnetConfig | UNetConfig,
                sde: SDEConfig, cfg: TrainConfig, input_hw: tuple[int, int], tap_channels: tuple[int, ...],
                state_path: Path | None = None, progress: bool = True,
                on_checkpoint: Callable[[EMA, int, float], dict | None] | None = None, checkpoint_every_s: float = 120.0):
    """DSM training of a ScoreSubnet (config SubnetConfig) or the baseline U-Net (UNetConfig)."""
    torch.manual_seed(cfg.seed)
    model = build_score_model(model_cfg, sde, tap_channels, input_hw)
    if extractor is not None:
        extractor.requires_grad_(False).eval()
    labels = torch.tensor(cfg.labels)
    keep = torch.isin(train.labels, labels)
    x_all = norm.normalise(train.mels[keep])[:, None]
    if len(x_all) == 0:
        raise ValueError(f"no training clips with labels {cfg.labels}")

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        sigma = sample_training_sigma(cfg.batch_size, sde, gen)
        noise = torch.randn(x_all[idx].shape, generator=gen)
        return dsm_loss(model, extractor, x_all[idx], sigma, noise, sde)

    return train_loop(model, loss_fn, cfg, state_path, "score", on_checkpoint, checkpoint_every_s, progress)
