"""The engine's one log-Mel definition: waveform -> (n_mels, frames) and the fixed-length clip window."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import InvalidInput
from ..storage.config import FeatureConfig


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def _mel_filterbank_np(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, shape (n_mels, n_fft // 2 + 1)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    return weights


def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    return torch.from_numpy(_mel_filterbank_np(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)).float()


def stft(wave: torch.Tensor, cfg: FeatureConfig, window: torch.Tensor | None = None) -> torch.Tensor:
    """The engine's one analysis: (..., samples) -> complex (..., n_fft // 2 + 1, frames); reflect pad
    (n_fft - hop) / 2 on both sides, centre=False, Hann window (or ``window``)."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    shape = wave.shape
    x = torch.nn.functional.pad(wave.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect").squeeze(1)
    if window is None:
        window = torch.hann_window(cfg.win_length, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=False, return_complex=True)
    return spec.reshape(*shape[:-1], spec.shape[-2], spec.shape[-1])


def stft_magnitude(wave: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(..., samples) -> (..., n_fft // 2 + 1, frames) magnitudes of ``stft``."""
    return stft(wave, cfg).abs()


def log_mel(wave: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(..., samples) float waveform -> (..., n_mels, frames) natural-log Mel magnitudes."""
    if wave.shape[-1] <= (cfg.n_fft - cfg.hop_length) // 2:
        raise InvalidInput(f"waveform of {wave.shape[-1]} samples is too short for n_fft={cfg.n_fft}")
    mag = stft_magnitude(wave, cfg)
    mel = torch.matmul(mel_filterbank(cfg).to(mag), mag)
    return torch.log(torch.clamp(mel, min=cfg.log_floor))


def peak_normalise(wave: np.ndarray, peak: float) -> np.ndarray:
    m = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave * (peak / m) if m > 0 else wave


def fit_to_window(wave: np.ndarray, n: int) -> tuple[np.ndarray, int, int]:
    """Centre a short clip in n samples (zero padding); crop a long one to its most energetic n samples.

    Returns (window, start, end): the clip's content occupies window[start:end].
    """
    if len(wave) <= n:
        start = (n - len(wave)) // 2
        out = np.zeros(n, dtype=np.float32)
        out[start:start + len(wave)] = wave
        return out, start, start + len(wave)
    energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    best = int(np.argmax(energy[n:] - energy[:-n]))
    return wave[best:best + n].astype(np.float32), 0, n


def clip_features(wave: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """Raw mono waveform at any rate -> ((n_mels, frames) log-Mel, (first, last) frames holding speech)."""
    from .wav import resample

    wave = resample(np.asarray(wave, dtype=np.float32), sample_rate, cfg.sample_rate)
    wave = peak_normalise(wave, cfg.peak)
    window, start, end = fit_to_window(wave, cfg.clip_samples)
    mel = log_mel(torch.from_numpy(window), cfg)
    return mel, (start // cfg.hop_length, min(cfg.frames, -(-end // cfg.hop_length)))


def log_mel_range(cfg: FeatureConfig) -> tuple[float, float]:
    """The log-Mel values a waveform in [-1, 1] can reach: from the log floor up to
    log(sum of the window * largest filterbank row sum), the bound of |STFT| times the filter weights."""
    window_sum = float(torch.hann_window(cfg.win_length).sum())
    return math.log(cfg.log_floor), math.log(window_sum * float(mel_filterbank(cfg).sum(dim=1).max()))
