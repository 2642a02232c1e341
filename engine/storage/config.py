"""Frozen configuration dataclasses, one per concern, serialised next to the weights.

A checkpoint's JSON holds every one of these, so a checkpoint alone rebuilds its models.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureConfig:
    """The engine's single log-Mel definition (shared by training, sampling and evaluation).

    It is the analysis the 16 kHz / 80-band HiFi-GAN vocoder expects: reflect-pad (n_fft - hop) / 2
    on both sides, STFT with center=False, Hann window, magnitude, Slaney mel scale and norm,
    natural log of max(x, 1e-5), each clip peak-normalised first.
    """

    sample_rate: int = 16000
    n_fft: int = 640
    win_length: int = 640
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    peak: float = 0.95
    frames: int = 72  # 0.72 s; >= 97% of FSDD clips fit uncropped (measured: 97th percentile 65.4 frames)

    @property
    def clip_samples(self) -> int:
        return self.frames * self.hop_length


@dataclass(frozen=True)
class SDEConfig:
    """VE SDE in EDM's sigma parameterisation (Karras et al. 2022).

    x_t = x_0 + sigma * n. EDM's preconditioning (c_in, c_skip, c_out, c_noise) keeps network inputs and
    targets at unit variance at every sigma, which is what lets a small model on a CPU budget learn.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 1.0
    p_mean: float = -0.5  # log-normal training sigma: mostly mid-range, few draws where nothing is audible
    p_std: float = 1.2
    rho: float = 7.0


@dataclass(frozen=True)
class ClassifierConfig:
    n_classes: int = 10
    n_mels: int = 80
    frames: int = 72
    widths: tuple[int, ...] = (32, 48, 96, 192)  # stem, then one stride-2 stage per further width
    blocks: tuple[int, ...] = (0, 1, 1, 1)  # residual blocks per stage (stem has none)
    norm: str = "affine"  # "affine" (folds into conv once frozen; cheap adjoint) or "groupnorm"
    emb_dim: int = 64


@dataclass(frozen=True)
class SubnetConfig:
    widths: tuple[int, ...] = (24, 48, 64, 96)  # decoder widths at the classifier's tap depths
    attention_depths: tuple[int, ...] = (2, 3)  # depths where decoder queries attend to the taps
    heads: int = 4
    emb_dim: int = 64
    use_taps: bool = True  # False: the x_t-only ablation (same decoder, no classifier taps)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seconds: float = 600.0
    max_steps: int = 10**9
    seed: int = 0
    labels: tuple[int, ...] = tuple(range(10))
    time_shift: bool = True


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kw = {}
    for k, v in d.items():
        kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def edm_sigma_max(max_pairwise_distance: float) -> float:
    """Song & Ermon (2020): sigma_max about the largest distance between training points."""
    return float(math.ceil(max_pairwise_distance))
