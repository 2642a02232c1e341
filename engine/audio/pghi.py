"""Phase-gradient heap integration (PGHI): an STFT phase from the STFT magnitude alone, without iterating.

Prusa, Balazs and Søndergaard, "A Noniterative Method for Reconstruction of Phase from STFT Magnitude",
IEEE/ACM TASLP 25(5), 2017. For a Gaussian window exp(-pi t^2 / lambda) the phase derivatives are the
log-magnitude's derivatives turned by 90 degrees:

    d phase / d time = omega + (2 pi / lambda) d log|X| / d omega       (instantaneous frequency)
    d phase / d omega =      - (lambda / 2 pi) d log|X| / d time         (minus the group delay)

with the phase measured from the window's centre. A Hann window of length L behaves like the Gaussian of
lambda = 0.25645 L^2 (the value the paper gives for it). The phase is then integrated from bin to bin along the
largest magnitudes first (a max-heap), where these estimates are the most reliable.

The engine's STFT (``features.stft``) measures phase from the window's start: with the window centred at
n_fft / 2, that adds pi per bin.
"""
from __future__ import annotations

import heapq

import numpy as np

from ..storage.config import FeatureConfig

HANN_LAMBDA = 0.25645  # lambda / L^2 of the Gaussian window that a Hann window of length L behaves like


def phase_steps(mag: np.ndarray, cfg: FeatureConfig, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """One clip's (bins, frames) magnitude -> the phase advance (radians, window-centred convention) per frame
    step and per bin step at every bin, from centred differences (one-sided at the first and last frame) of
    log(max(mag, floor * max(mag))): the floor keeps the logarithm finite where a magnitude is 0."""
    lam = HANN_LAMBDA * cfg.win_length ** 2
    a, m_fft = cfg.hop_length, cfg.n_fft
    log_mag = np.log(np.maximum(mag, floor * mag.max()))
    d_bins = np.gradient(log_mag, axis=0)
    d_bins[[0, -1]] = 0.0  # |X| is even about 0 and Nyquist: its centred difference there is 0
    bin_freq = 2 * np.pi * a / m_fft * np.arange(mag.shape[0])[:, None]
    per_frame = bin_freq + (a * m_fft / lam) * d_bins
    per_bin = -(lam / (a * m_fft)) * np.gradient(log_mag, axis=1)
    return per_frame, per_bin


def heap_integrate(mag: np.ndarray, per_frame: np.ndarray, per_bin: np.ndarray, tol: float) -> np.ndarray:
    """Integrate one clip's phase steps (bins, frames) over the bins above ``tol * max(mag)``, always going on from
    the largest bin reached so far, by the trapezoidal rule between neighbours; each region that the tolerance
    cuts off from the others starts at phase 0 at its largest bin. Bins below the tolerance get phase 0.

    The sequential core runs over those bins only, renumbered by descending magnitude (their rank), so that the
    heap holds plain integers and every lookup is a list index; rank n stands for a neighbour outside the grid
    or below the tolerance, already done."""
    bins, frames = mag.shape
    flat = mag.ravel()
    above = np.flatnonzero(flat > tol * flat.max())
    order = above[np.argsort(-flat[above])]
    n = len(order)
    # ranks on the grid padded by one bin on every side, so that every bin has four neighbours
    width = frames + 2
    padded = order + width + 1 + 2 * (order // frames)
    rank = np.full((bins + 2) * width, n)
    rank[padded] = np.arange(n)
    next_frame, prev_frame, next_bin, prev_bin = (rank[padded + d].tolist() for d in (1, -1, width, -width))
    # half of each bin's phase step: the step between neighbours is the sum of their halves (trapezoidal rule)
    half_frame = (per_frame.ravel()[order] / 2).tolist() + [0.0]
    half_bin = (per_bin.ravel()[order] / 2).tolist() + [0.0]
    done = bytearray(n + 1)
    done[n] = 1
    phase = [0.0] * (n + 1)
    heap: list[int] = []
    pop, push = heapq.heappop, heapq.heappush
    for root in range(n):
        if done[root]:
            continue
        done[root] = 1
        heap.append(root)
        while heap:  # the four neighbours unrolled: this loop is PGHI's sequential core, run once per bin
            k = pop(heap)
            p, hf, hb = phase[k], half_frame[k], half_bin[k]
            j = next_frame[k]
            if not done[j]:
                done[j] = 1
                phase[j] = p + hf + half_frame[j]
                push(heap, j)
            j = prev_frame[k]
            if not done[j]:
                done[j] = 1
                phase[j] = p - hf - half_frame[j]
                push(heap, j)
            j = next_bin[k]
            if not done[j]:
                done[j] = 1
                phase[j] = p + hb + half_bin[j]
                push(heap, j)
            j = prev_bin[k]
            if not done[j]:
                done[j] = 1
                phase[j] = p - hb - half_bin[j]
                push(heap, j)
    out = np.zeros(flat.size)
    out[order] = phase[:n]
    return out.reshape(bins, frames)


def pghi_phase(mag: np.ndarray, cfg: FeatureConfig, tol: float, floor: float = 1e-5) -> np.ndarray:
    """One clip's (bins, frames) STFT magnitude -> its phase in ``features.stft``'s convention, in [-pi, pi],
    computed in float64. Bins below ``tol`` times the largest, and all of a silent clip, get the phase of a pulse
    at the window's centre."""
    mag = np.asarray(mag, dtype=np.float64)
    phase = np.pi * np.arange(mag.shape[0], dtype=np.float64)[:, None]  # from the window's centre to its start
    if mag.max(initial=0.0) > 0:
        phase = phase + heap_integrate(mag, *phase_steps(mag, cfg, floor), tol)
    else:
        phase = np.broadcast_to(phase, mag.shape)
    return phase - 2 * np.pi * np.round(phase / (2 * np.pi))
