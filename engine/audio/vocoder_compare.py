"""Copy-synthesis quality and speed of a vocoder: STOI, log-spectral distance, spectral convergence, time per
clip."""
from __future__ import annotations

import re
import statistics
import time
from typing import Callable

import numpy as np
import torch

SAMPLE_RATE = 16000


def _stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    try:
        from pystoi import stoi
    except ImportError as e:
        raise ModuleNotFoundError("STOI needs the pystoi package: pip install pystoi") from e
    return float(stoi(reference, degraded, sample_rate, extended=False))


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, n_fft: int = 512, hop: int = 128,
                          eps: float = 1e-10) -> float:
    """Log-spectral distance in dB, averaged over STFT frames.

    For each frame t: LSD_t = sqrt(mean_f (10 log10(|X_tf|^2 + eps) - 10 log10(|Y_tf|^2 + eps))^2), with X
    the reference's and Y the estimate's STFT (Hann window n_fft, hop ``hop``, no centring, frequencies
    0..Nyquist); LSD is the mean of LSD_t over all frames. eps (power 1e-10, i.e. -100 dB) keeps silent
    bins finite; both signals are the same lengths here (the caller truncates).
    """
    if len(reference) < n_fft:
        raise ValueError(f"signals of {len(reference)} samples are shorter than one STFT frame ({n_fft})")
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann

    def power_db(x: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[::hop]
        return 10.0 * np.log10(np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + eps)

    diff = power_db(reference) - power_db(estimate)
    return float(np.mean(np.sqrt(np.mean(diff ** 2, axis=-1))))


def copy_synthesis_metrics(reference_wave: np.ndarray, vocoded_wave: np.ndarray,
                           sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """STOI (pystoi, extended=False) and LSD (dB) of a vocoded waveform against its reference at 16 kHz.

    Both are 1-D; the longer is truncated to the shorter (a vocoder's output is frames x hop, which may
    differ from the source length by under one hop).
    """
    ref = np.asarray(reference_wave, dtype=np.float64).reshape(-1)
    voc = np.asarray(vocoded_wave, dtype=np.float64).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"copy-synthesis metrics are defined at {SAMPLE_RATE} Hz, got {sample_rate}")
    if not (np.isfinite(ref).all() and np.isfinite(voc).all()):
        raise ValueError("waveforms contain NaN or infinite values")
    n = min(len(ref), len(voc))
    ref, voc = ref[:n], voc[:n]
    return {"stoi": _stoi(ref, voc, sample_rate), "lsd": log_spectral_distance(ref, voc), "samples": n}


def spectral_convergence(wave: torch.Tensor, target_mag: torch.Tensor, feature_cfg) -> torch.Tensor:
    """Per clip ||(|STFT(wave)| - target_mag)|| / ||target_mag|| (Frobenius norms, the engine's STFT): how far a
    (B, samples) waveform's magnitudes are from the (B, bins, frames) ones it was made from; 0 meets them all."""
    from .features import stft_magnitude

    return (stft_magnitude(wave, feature_cfg) - target_mag).norm(dim=(1, 2)) / target_mag.norm(dim=(1, 2))


def seconds_per_clip(vocoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], mels: torch.Tensor,
                     batches: tuple[int, ...] = (1, 16), rounds: int = 3) -> dict[str, dict[int, list[float]]]:
    """Wall seconds per clip of each vocoder vocoding all of ``mels`` in consecutive batches of each size, for
    every round: one untimed warm-up round, then ``rounds`` rounds that each run every vocoder at every batch size
    once, interleaved so that a drift in the machine's speed falls on all of them alike."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    times = {name: {b: [] for b in batches} for name in vocoders}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, fn in vocoders.items():
                for b in batches:
                    t0 = time.perf_counter()
                    for i in range(0, len(mels), b):
                        fn(mels[i:i + b])
                    if r:
                        times[name][b].append((time.perf_counter() - t0) / len(mels))
    return times


def compare_vocoders(vocoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], waves: list[np.ndarray],
                     feature_cfg, batches: tuple[int, ...] = (1, 16), rounds: int = 3) -> list[dict]:
    """Copy-synthesis of real clips through each vocoder: STOI and LSD on the clips' windows joined end to
    end (single 0.7 s clips are too short for STOI's 30-frame segments), and the milliseconds per clip at each
    batch size (``seconds_per_clip`` on the first ``max(batches)`` clips: median, min and max over ``rounds``),
    with the real-time factor of the median at the first batch size.

    ``waves`` are 16 kHz clips already peak-normalised and fitted to the feature window.
    """
    from .features import log_mel

    ref = np.concatenate(waves)
    mels = log_mel(torch.from_numpy(np.stack(waves)), feature_cfg).float()
    times = seconds_per_clip(vocoders, mels[:max(batches)], batches, rounds)
    clip_seconds = mels.shape[-1] * feature_cfg.hop_length / feature_cfg.sample_rate
    rows = []
    for name, fn in vocoders.items():
        with torch.no_grad():
            out = np.concatenate([fn(mels[i:i + 8]).numpy().reshape(-1) for i in range(0, len(mels), 8)])
        row = {"vocoder": name, **copy_synthesis_metrics(ref, out),
               "rtf_median": statistics.median(times[name][batches[0]]) / clip_seconds}
        for b, ts in times[name].items():
            row.update({f"ms_b{b}": 1e3 * statistics.median(ts), f"ms_b{b}_min": 1e3 * min(ts),
                        f"ms_b{b}_max": 1e3 * max(ts)})
        rows.append(row)
    return rows


def test_clip_waves(data: str, clips: int, cfg) -> list[np.ndarray]:
    """``clips`` test-split clips spread over ``data``, resampled, peak-normalised and fitted to the clip window:
    the references of a copy-synthesis comparison."""
    from .datasets import list_items
    from .features import fit_to_window, peak_normalise
    from .wav import read_wav, resample

    items = list_items(data, "test")
    waves = []
    for it in items[:: max(1, len(items) // clips)][:clips]:
        x, rate = read_wav(it.path)
        waves.append(fit_to_window(peak_normalise(resample(x, rate, cfg.sample_rate), cfg.peak), cfg.clip_samples)[0])
    return waves


def render_rows(rows: list[dict]) -> str:
    """The comparison as a fixed-width table: STOI, log-spectral distance (dB), real-time factor and the median
    milliseconds per clip at each batch size timed."""
    timed = [k for k in rows[0] if re.fullmatch(r"ms_b\d+", k)] if rows else []
    lines = [f"{'vocoder':<12} {'STOI':>6} {'LSD dB':>7} {'RTF':>7}"
             + "".join(f" {'ms/clip ' + k[3:]:>12}" for k in timed)]
    lines += [f"{r['vocoder']:<12} {r['stoi']:6.3f} {r['lsd']:7.2f} {r['rtf_median']:7.3f}"
              + "".join(f" {r[k]:12.2f}" for k in timed) for r in rows]
    return "\n".join(lines)
