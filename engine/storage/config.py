"""Frozen configuration dataclasses, one per concern, serialised next to the weights.

A checkpoint's JSON holds every one of these, so a checkpoint alone rebuilds its models.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from ..errors import InvalidInput


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

    def __post_init__(self):
        check_fields(self)
        if not (0 <= self.fmin < self.fmax <= self.sample_rate / 2):
            raise InvalidInput(f"fmin and fmax must satisfy 0 <= fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}")
        if not (self.log_floor > 0 and 0 < self.peak <= 1):
            raise InvalidInput(f"log_floor must be > 0 and peak in (0, 1], got {self.log_floor}, {self.peak}")
        if self.win_length > self.n_fft or self.hop_length > self.win_length:
            raise InvalidInput(f"need hop_length <= win_length <= n_fft, got {self.hop_length}, {self.win_length}, "
                               f"{self.n_fft}")

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

    def __post_init__(self):
        check_fields(self)
        if not (0 < self.sigma_min < self.sigma_max and self.sigma_data > 0 and self.p_std > 0 and self.rho > 0):
            raise InvalidInput("need 0 < sigma_min < sigma_max and sigma_data, p_std, rho > 0, got "
                               f"{self.sigma_min}, {self.sigma_max}, {self.sigma_data}, {self.p_std}, {self.rho}")


@dataclass(frozen=True)
class ClassifierConfig:
    n_classes: int = 10
    n_mels: int = 80
    frames: int = 72
    widths: tuple[int, ...] = (32, 48, 96, 192)  # stem, then one stride-2 stage per further width
    blocks: tuple[int, ...] = (0, 1, 1, 1)  # residual blocks per stage (stem has none)
    norm: str = "affine"  # "affine" (folds into conv once frozen; cheap adjoint) or "groupnorm"
    emb_dim: int = 64

    def __post_init__(self):
        check_fields(self, may_be_zero=("blocks",))
        if self.norm not in ("affine", "groupnorm"):
            raise InvalidInput(f"norm must be 'affine' or 'groupnorm', got {self.norm!r}")
        if len(self.blocks) != len(self.widths):
            raise InvalidInput(f"blocks {self.blocks} needs one entry per width {self.widths}")


@dataclass(frozen=True)
class SubnetConfig:
    widths: tuple[int, ...] = (24, 48, 64, 96)  # decoder widths at the classifier's tap depths
    attention_depths: tuple[int, ...] = (2, 3)  # depths where decoder queries attend to the taps
    heads: int = 4
    emb_dim: int = 64
    use_taps: bool = True  # False: the x_t-only ablation (same decoder, no classifier taps)
    label_classes: int = 0  # > 0: a distilled student, which also takes the label and gamma as inputs
    # a student's gradient taps from the one cotangent of logsumexp + gamma log p(y | x) (``TapExtractor.steered``)
    # instead of logsumexp's alone: the label reaches the taps at no extra cost
    guided_taps: bool = False

    def __post_init__(self):
        check_fields(self, may_be_zero=("attention_depths", "label_classes"))
        if self.guided_taps and not (self.use_taps and self.label_classes):
            raise InvalidInput("guided_taps needs a student on the taps (use_taps and label_classes > 0)")


@dataclass(frozen=True)
class UNetConfig:
    """The two-model pipeline's score network (``engine.models.unet.UNet``)."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_level: int = 1
    heads: int = 4
    emb_dim: int = 64
    label_classes: int = 0  # > 0: a distilled student, which also takes the label and gamma as inputs

    def __post_init__(self):
        check_fields(self, may_be_zero=("label_classes",))


@dataclass(frozen=True)
class DataRegime:
    """What data a network is trained or judged on, beyond the folder and the digits: a speaker subset and a
    corruption applied to each clip's waveform as it is loaded (``engine.audio.corruption``): a synthetic room
    impulse response of reverberation time ``rt60_s`` (0: none), then white noise at ``snr_db`` (``noise``),
    both drawn from ``seed`` and the clip's file name, so the same clip is always corrupted the same way."""

    speakers: tuple[str, ...] = ()  # empty: every speaker
    noise: bool = False
    snr_db: float = 10.0
    rt60_s: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.speakers, tuple) or not all(isinstance(v, str) and v for v in self.speakers):
            raise InvalidInput(f"speakers must be a list of speaker names, got {self.speakers!r}")
        if not isinstance(self.noise, bool):
            raise InvalidInput(f"noise must be true or false, got {self.noise!r}")
        for key in ("snr_db", "rt60_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidInput(f"{key} must be a finite number, got {v!r}")
        if not 0 <= self.rt60_s <= 2.0:
            raise InvalidInput(f"rt60_s must be in [0, 2] seconds, got {self.rt60_s}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInput(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def corrupts(self) -> bool:
        return self.noise or self.rt60_s > 0

    def describe(self) -> str:
        parts = [f"speakers {','.join(self.speakers)}" if self.speakers else "every speaker"]
        if self.rt60_s > 0:
            parts.append(f"reverberation RT60 {self.rt60_s:g} s")
        if self.noise:
            parts.append(f"white noise at {self.snr_db:g} dB SNR")
        return ", ".join(parts) + (f" (seed {self.seed})" if self.corrupts else "")


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


def _type_error(key: str, expected: str, value) -> str:
    return f"{key} must be {expected}, got {value!r} ({type(value).__name__})"


def _check_value(key: str, hint, value, may_be_zero: bool) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None: it fits). Integers must be >= 1 (>= 0 where
    ``may_be_zero``): every integer of these configs is a size or a count."""
    if hint is bool:
        return None if isinstance(value, bool) else _type_error(key, "true or false", value)
    if hint is str:
        return None if isinstance(value, str) else _type_error(key, "a string", value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return _type_error(key, "an integer", value)
        return None if value >= (0 if may_be_zero else 1) else f"{key} must be >= {0 if may_be_zero else 1}, got {value}"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _type_error(key, "a number", value)
        return None if math.isfinite(value) else f"{key} must be finite, got {value}"
    if typing.get_origin(hint) is tuple:
        (item, *_) = typing.get_args(hint)
        if not isinstance(value, tuple) or not value:
            return _type_error(key, "a non-empty list", value)
        for i, v in enumerate(value):
            if (why := _check_value(f"{key}[{i}]", item, v, may_be_zero)) is not None:
                return why
        return None
    return None


def check_fields(cfg, may_be_zero: tuple[str, ...] = ()) -> None:
    """Every field of the dataclass ``cfg`` has its annotated type (integers >= 1, or >= 0 for the fields in
    ``may_be_zero``; numbers finite); raises a ``ValueError`` naming the first one that does not."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        why = _check_value(f.name, hints[f.name], getattr(cfg, f.name), f.name in may_be_zero)
        if why is not None:
            raise InvalidInput(why)


def from_dict(cls, d: dict):
    """``cls`` from its JSON form; unknown keys, wrong types and out-of-range values raise a ``ValueError``
    naming the key."""
    if not isinstance(d, dict):
        raise InvalidInput(f"{cls.__name__} must be a mapping of its fields, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise InvalidInput(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kw = {}
    for k, v in d.items():
        kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def edm_sigma_max(max_pairwise_distance: float) -> float:
    """Song & Ermon (2020): sigma_max about the largest distance between training points."""
    return float(math.ceil(max_pairwise_distance))
