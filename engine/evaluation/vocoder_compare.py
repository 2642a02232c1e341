"""Copy-synthesis quality and speed of a vocoder: STOI, log-spectral distance, the evaluation classifier's recognised
fraction and Frechet distance on the re-analysed audio (each over the test clips and over two fixed halves of them),
spectral convergence, time per clip."""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ..errors import InvalidInput, MissingDependency
from ..storage.config import FeatureConfig
from .timing import interleaved

SAMPLE_RATE = 16000


def _stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    try:
        from pystoi import stoi
    except ImportError as e:
        raise MissingDependency("STOI needs the pystoi package: pip install pystoi") from e
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
        raise InvalidInput(f"signals of {len(reference)} samples are shorter than one STFT frame ({n_fft})")
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
        raise InvalidInput(f"copy-synthesis metrics are defined at {SAMPLE_RATE} Hz, got {sample_rate}")
    if not (np.isfinite(ref).all() and np.isfinite(voc).all()):
        raise InvalidInput("waveforms contain NaN or infinite values")
    n = min(len(ref), len(voc))
    ref, voc = ref[:n], voc[:n]
    return {"stoi": _stoi(ref, voc, sample_rate), "lsd": log_spectral_distance(ref, voc), "samples": n}


def spectral_convergence(wave: torch.Tensor, target_mag: torch.Tensor, feature_cfg) -> torch.Tensor:
    """Per clip ||(|STFT(wave)| - target_mag)|| / ||target_mag|| (Frobenius norms, the engine's STFT): how far a
    (B, samples) waveform's magnitudes are from the (B, bins, frames) ones it was made from; 0 meets them all."""
    from ..audio.features import stft_magnitude

    return (stft_magnitude(wave, feature_cfg) - target_mag).norm(dim=(1, 2)) / target_mag.norm(dim=(1, 2))


def seconds_per_clip(vocoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], mels: torch.Tensor,
                     batches: tuple[int, ...] = (1, 16), rounds: int = 3) -> dict[str, dict[int, list[float]]]:
    """Wall seconds per clip of each vocoder vocoding all of ``mels`` in consecutive batches of each size, for
    every round: one untimed warm-up round, then ``rounds`` rounds that each run every vocoder at every batch size
    once, interleaved so that a drift in the machine's speed falls on all of them alike."""
    if rounds < 1:
        raise InvalidInput("rounds must be >= 1")

    def vocode_all(fn, b):
        for i in range(0, len(mels), b):
            fn(mels[i:i + b])

    runs = {(name, b): (lambda fn=fn, b=b: vocode_all(fn, b)) for name, fn in vocoders.items() for b in batches}
    with torch.inference_mode():
        times = interleaved(runs, rounds, warmup=1)
    return {name: {b: [t / len(mels) for t in times[(name, b)]] for b in batches} for name in vocoders}


class RecognitionJudge(Protocol):
    """What a copy synthesis is judged by (``evaluation.quality.QualityJudge``): the evaluation classifier's
    recognised fraction and embeddings of waveforms, and the Frechet distance of embeddings to the real test clips'."""

    features: FeatureConfig
    digits: list[int]

    def recognition(self, waves: torch.Tensor, labels: Sequence[int], sample_rate: int
                    ) -> tuple[float, dict, np.ndarray]: ...

    def fd(self, embeddings: np.ndarray) -> float: ...


@dataclass(frozen=True)
class ReferenceClips:
    """Real clips at the features' rate, peak-normalised and fitted to the clip window: what a copy synthesis starts
    from and is measured against. ``source`` says which clips, in words."""

    waves: np.ndarray  # (clips, samples) float32
    labels: tuple[int, ...]
    source: str

    def __post_init__(self):
        if self.waves.ndim != 2 or len(self.waves) != len(self.labels):
            raise InvalidInput(f"reference waves must be (clips, samples) with one label per clip, got waves of shape "
                               f"{self.waves.shape} and {len(self.labels)} labels")
        if len(self.labels) < 2:
            raise InvalidInput(f"a copy synthesis needs at least 2 reference clips (one per half), got "
                               f"{len(self.labels)}")


def load_reference_clips(data: str, clips: int | None, cfg: FeatureConfig,
                         digits: Sequence[int] | None = None) -> ReferenceClips:
    """The test split of ``data`` (only ``digits``, if given), in file-name order: every clip, or ``clips`` of them
    spread evenly over it (every k-th). Each resampled, peak-normalised and fitted to the clip window."""
    from ..audio.datasets import list_items
    from ..audio.features import fit_to_window, peak_normalise
    from ..audio.wav import read_wav, resample

    if clips is not None and clips < 2:
        raise InvalidInput(f"clips must be at least 2 (one per half of the test set), got {clips}")
    items = list_items(data, "test", tuple(digits) if digits is not None else None)
    step = 1 if clips is None else max(1, len(items) // clips)
    chosen = items[::step][:clips]
    if clips is not None and len(chosen) < clips:
        raise InvalidInput(f"clips={clips} but the test split of {data} holds {len(items)}")
    waves = []
    for it in chosen:
        x, rate = read_wav(it.path)
        waves.append(fit_to_window(peak_normalise(resample(x, rate, cfg.sample_rate), cfg.peak), cfg.clip_samples)[0])
    source = (f"all {len(items)} test clips of {data}" if len(chosen) == len(items) else
              f"{len(chosen)} of the {len(items)} test clips of {data} (in file-name order, one in {step} from the "
              "first)")
    return ReferenceClips(np.stack(waves), tuple(it.label for it in chosen), source)


HALVES = ("even", "odd")
REAL = "real recordings"  # the reference row: the clips themselves, re-analysed like every vocoder's output
# the copy-synthesis quality measures and whether a higher value is better; how each is printed
QUALITY = {"stoi": True, "lsd": False, "recognised": True, "fd": False}
QUALITY_FORMATS = {"stoi": ".4f", "lsd": ".2f", "recognised": ".3f", "fd": ".1f"}


def split_halves(clips: int) -> dict[str, np.ndarray]:
    """Two fixed halves of ``clips`` clips, by position: even and odd. Disjoint, together every clip once; in file-name
    order both hold every digit and speaker alike. The difference of a measure between them is its spread."""
    if clips < 2:
        raise InvalidInput(f"two halves need at least 2 clips, got {clips}")
    return dict(zip(HALVES, (np.arange(0, clips, 2), np.arange(1, clips, 2))))


def vocode(name: str, fn: Callable[[torch.Tensor], torch.Tensor], mels: torch.Tensor, samples: int,
           batch: int = 8) -> np.ndarray:
    """(clips, samples) waveforms of vocoder ``name`` for ``mels``, ``batch`` clips a call; one of another shape or
    with NaN or inf is refused, naming the vocoder."""
    with torch.no_grad():
        out = torch.cat([fn(mels[i:i + batch]) for i in range(0, len(mels), batch)])
    if out.shape != (len(mels), samples):
        raise InvalidInput(f"vocoder {name!r} returned waveforms of shape {tuple(out.shape)}, expected "
                           f"{(len(mels), samples)}")
    if not torch.isfinite(out).all():
        raise InvalidInput(f"vocoder {name!r} returned NaN or infinite samples")
    return out.numpy()


def copy_synthesis_quality(reference: ReferenceClips, waves: np.ndarray, judge: RecognitionJudge) -> dict:
    """STOI and LSD of ``waves`` against the reference clips, each set joined end to end (single 0.72 s clips are
    too short for STOI's 30-frame segments), and the judge's recognised fraction and FD on the re-analysed
    ``waves``: over all clips and over each half (``split_halves``)."""
    bad = sorted(set(reference.labels) - set(judge.digits))
    if bad:
        raise InvalidInput(f"reference clips of digits {bad} are not among the judge's digits {judge.digits}")
    labels = np.asarray(reference.labels)

    def measures(idx: np.ndarray) -> dict:
        joined = copy_synthesis_metrics(np.concatenate(reference.waves[idx]), np.concatenate(waves[idx]),
                                        judge.features.sample_rate)
        recognised, _, embeddings = judge.recognition(torch.from_numpy(waves[idx]), labels[idx].tolist(),
                                                      judge.features.sample_rate)
        return {"clips": len(idx), "stoi": joined["stoi"], "lsd": joined["lsd"], "recognised": recognised,
                "fd": judge.fd(embeddings)}

    return {**measures(np.arange(len(labels))),
            "halves": {half: measures(idx) for half, idx in split_halves(len(labels)).items()}}


def copy_synthesis(vocoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], reference: ReferenceClips,
                   judge: RecognitionJudge) -> list[dict]:
    """The reference clips' log-Mels (the judge's features) through each vocoder, judged by
    ``copy_synthesis_quality``: one row per vocoder, after the row of the real recordings themselves."""
    from ..audio.features import log_mel

    cfg = judge.features
    mels = log_mel(torch.from_numpy(reference.waves), cfg).float()
    rows = [{"vocoder": REAL, **copy_synthesis_quality(reference, reference.waves, judge)}]
    for name, fn in vocoders.items():
        waves = vocode(name, fn, mels, reference.waves.shape[1])
        rows.append({"vocoder": name, **copy_synthesis_quality(reference, waves, judge)})
    return rows


def half_spread(row: dict, measure: str) -> float:
    """|even half - odd half| of a copy-synthesis row's ``measure``."""
    first, second = (row["halves"][h][measure] for h in HALVES)
    return abs(first - second)


def against_baseline(row: dict, baseline: dict) -> dict[str, dict]:
    """Per quality measure: how much worse ``row`` is than ``baseline`` (negative: better), the baseline's spread
    between the halves, and whether the row is no worse than the baseline beyond that spread."""
    out = {}
    for m, higher_is_better in QUALITY.items():
        worse_by = (baseline[m] - row[m]) if higher_is_better else (row[m] - baseline[m])
        spread = half_spread(baseline, m)
        out[m] = {"worse_by": worse_by, "spread": spread, "meets": worse_by <= spread}
    return out


def compare_vocoders(vocoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], reference: ReferenceClips,
                     judge: RecognitionJudge, batches: tuple[int, ...] = (1, 16), rounds: int = 3,
                     timed_clips: int = 16) -> list[dict]:
    """``copy_synthesis`` rows, each vocoder's with its milliseconds per clip at each batch size
    (``seconds_per_clip`` on ``timed_clips`` of the clips spread evenly over them: median, min and max over
    ``rounds``) and the real-time factor of the median at the first batch size."""
    from ..audio.features import log_mel

    cfg = judge.features
    timed = reference.waves[:: max(1, len(reference.waves) // timed_clips)][:timed_clips]
    times = seconds_per_clip(vocoders, log_mel(torch.from_numpy(timed), cfg).float(), batches, rounds)
    clip_seconds = reference.waves.shape[1] / cfg.sample_rate
    rows = copy_synthesis(vocoders, reference, judge)
    for row in rows[1:]:
        ts = times[row["vocoder"]]
        row["rtf_median"] = statistics.median(ts[batches[0]]) / clip_seconds
        for b, t in ts.items():
            row.update({f"ms_b{b}": 1e3 * statistics.median(t), f"ms_b{b}_min": 1e3 * min(t),
                        f"ms_b{b}_max": 1e3 * max(t)})
    return rows


def render_rows(rows: list[dict]) -> str:
    """The comparison as a fixed-width table: each quality measure over all clips with its value on each half, then
    the real-time factor and median milliseconds per clip at each batch size timed (- for the real recordings)."""
    timed = [k for k in rows[-1] if re.fullmatch(r"ms_b\d+", k)] if rows else []
    lines = [f"{'vocoder':<16}" + "".join(f" {m + ' (' + '/'.join(HALVES) + ')':>26}" for m in QUALITY_FORMATS)
             + f" {'RTF':>7}" + "".join(f" {'ms/clip ' + k[3:]:>12}" for k in timed)]
    for r in rows:
        cells = [f"{r[m]:{f}} ({'/'.join(format(r['halves'][h][m], f) for h in HALVES)})"
                 for m, f in QUALITY_FORMATS.items()]
        speed = [f"{r['rtf_median']:7.3f}"] + [f"{r[k]:12.2f}" for k in timed] if "rtf_median" in r else \
            [f"{'-':>7}"] + [f"{'-':>12}" for _ in timed]
        lines.append(f"{r['vocoder']:<16}" + "".join(f" {c:>26}" for c in cells) + " " + " ".join(speed))
    return "\n".join(lines)
