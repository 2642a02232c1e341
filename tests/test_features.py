import math
import wave

import numpy as np
import pytest
import torch

from engine.audio.wav import AudioFileError, read_wav, write_wav
from engine.storage.config import FeatureConfig
from engine.audio.features import clip_features, fit_to_window, log_mel, log_mel_range, mel_filterbank

CFG = FeatureConfig()


def direct_log_mel(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Frame-by-frame DFT with numpy: reflect pad, periodic Hann, |X|, Slaney mel, natural log."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    xp = np.pad(x, pad, mode="reflect")
    n = np.arange(cfg.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.n_fft)
    frames = 1 + (len(xp) - cfg.n_fft) // cfg.hop_length
    k = np.arange(cfg.n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, n) / cfg.n_fft)
    mags = np.stack([np.abs(dft @ (xp[i * cfg.hop_length:i * cfg.hop_length + cfg.n_fft] * window)) for i in range(frames)], 1)
    return np.log(np.maximum(mel_filterbank(cfg).double().numpy() @ mags, cfg.log_floor))


def test_log_mel_matches_direct_dft_computation():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(len(t))
    ours = log_mel(torch.from_numpy(x), CFG).numpy()
    ref = direct_log_mel(x, CFG)
    assert ours.shape == (80, 25) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_slaney_filterbank_shape_and_normalisation():
    fb = mel_filterbank(CFG).double().numpy()
    assert fb.shape == (80, 321)
    assert (fb >= 0).all() and (fb.sum(1) > 0).all()
    freqs = np.linspace(0, 8000, 321)
    peaks = freqs[fb.argmax(1)]
    assert np.all(np.diff(peaks) >= 0)
    # Slaney norm: each triangle has area ~1 in Hz (2 / bandwidth peak height): sum * bin width ~ 1.
    area = fb.sum(1) * (freqs[1] - freqs[0])
    assert np.median(area) == pytest.approx(1.0, rel=0.1)
    # Below 1 kHz the Slaney scale is linear: centre spacing constant there.
    low = np.diff(peaks[:10])
    assert low.std() < 20


def test_sine_energy_lands_in_the_right_band():
    t = np.arange(16000) / 16000
    m = log_mel(torch.from_numpy(np.sin(2 * np.pi * 1000 * t)), CFG)
    band = int(m.mean(1).argmax())
    fb = mel_filterbank(CFG).numpy()
    centre = np.linspace(0, 8000, 321)[fb[band].argmax()]
    assert abs(centre - 1000) < 60


def test_clip_window_centres_short_and_crops_long_clips_around_energy():
    short = np.ones(1000, dtype=np.float32)
    w, s, e = fit_to_window(short, 11520)
    assert (s, e) == ((11520 - 1000) // 2, (11520 - 1000) // 2 + 1000) and w[s:e].sum() == 1000
    long = np.zeros(30000, dtype=np.float32)
    long[20000:21000] = 1.0
    w, s, e = fit_to_window(long, 11520)
    assert w.sum() == 1000 and (s, e) == (0, 11520)
    mel, span = clip_features(np.sin(np.arange(4000) / 3.0).astype(np.float32), 8000, CFG)
    assert mel.shape == (80, 72)
    assert span == (11, 61)  # 8000 samples at 16 kHz = 50 frames, centred in 72: (72 - 50) // 2 = 11


def test_reachable_log_mel_range_bounds_real_audio():
    lo, hi = log_mel_range(CFG)
    x = np.sign(np.sin(2 * np.pi * 300 * np.arange(16000) / 16000))  # full-scale square wave: loud
    m = log_mel(torch.from_numpy(x), CFG)
    assert lo == pytest.approx(math.log(1e-5)) and m.max() <= hi and m.max() > hi - 2


def test_corrupt_and_truncated_wav_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEgarbage")
    with pytest.raises(AudioFileError, match="bad.wav"):
        read_wav(bad)
    good = tmp_path / "good.wav"
    write_wav(good, np.zeros(1600, dtype=np.float32), 16000)
    data = good.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioFileError, match="cut.wav"):
        read_wav(cut)


def test_wav_round_trip_and_nan_never_overwrites_a_good_file(tmp_path):
    p = tmp_path / "x.wav"
    x = 0.5 * np.sin(np.arange(1600) / 5.0).astype(np.float32)
    write_wav(p, x, 16000)
    y, rate = read_wav(p)
    assert rate == 16000 and np.abs(y - x).max() < 1e-4
    before = p.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        write_wav(p, np.full(1600, np.nan, dtype=np.float32), 16000)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["x.wav"]
    with wave.open(str(p)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    p = tmp_path / "y.wav"
    write_wav(p, np.zeros(160, dtype=np.float32), 16000)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
