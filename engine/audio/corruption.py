"""The condition shift of a data regime (``engine.storage.config.DataRegime``), applied to a clip's waveform as it
is loaded: a synthetic room impulse response (a direct path, then exponentially decaying Gaussian noise reaching
-60 dB at RT60), then additive white Gaussian noise at the regime's SNR against the reverberant clip's power.
Each clip's draws come from the regime's seed and the clip's file name, so a clip is corrupted the same way in
every run, split and process."""
from __future__ import annotations

import zlib

import numpy as np
from scipy.signal import fftconvolve

from ..storage.config import DataRegime


def clip_rng(regime: DataRegime, key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([regime.seed, zlib.crc32(key.encode())]))


def room_impulse_response(rt60_s: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-energy RIR: the direct path at t = 0, then a reverberant tail of Gaussian noise decaying by 60 dB over
    ``rt60_s`` (ln(1000) = 6.91 in amplitude), with as much energy as the direct path (direct-to-reverberant
    ratio 0 dB: a talker a few metres away in a small room)."""
    n = max(2, int(round(rt60_s * rate)))
    t = np.arange(1, n) / rate
    tail = rng.standard_normal(n - 1) * np.exp(-6.908 * t / rt60_s)
    h = np.concatenate([[1.0], tail / np.sqrt(np.sum(tail ** 2))])
    return h / np.sqrt(2.0)


def corrupt(wave: np.ndarray, rate: int, regime: DataRegime, key: str) -> np.ndarray:
    """``wave`` (float, mono) under ``regime``'s corruption; unchanged when it corrupts nothing."""
    if not regime.corrupts:
        return wave
    rng = clip_rng(regime, key)
    x = np.asarray(wave, dtype=np.float64)
    if regime.rt60_s > 0:
        x = fftconvolve(x, room_impulse_response(regime.rt60_s, rate, rng))[:len(x)]
    if regime.noise:
        power = float(np.mean(x ** 2))
        x = x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (regime.snr_db / 10))
    return x.astype(np.float32)
