"""WAV reading/writing (PCM 16-bit and float) and rate conversion, with errors that name the file."""
from __future__ import annotations

import os
import wave
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import AudioFileError, InvalidInput
from ..storage.atomic import atomic_write


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Return (mono float32 waveform in [-1, 1], sample rate)."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise AudioFileError(f"{path}: not a readable WAV file ({e})") from e
    if width not in (1, 2, 4):
        raise AudioFileError(f"{path}: unsupported sample width {width} bytes")
    if len(raw) != n * channels * width or n == 0:
        raise AudioFileError(f"{path}: truncated or empty WAV data ({len(raw)} bytes for {n} frames)")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    x = (x - 128.0) / 128.0 if width == 1 else x / float(2 ** (8 * width - 1))
    x = x.reshape(-1, channels).mean(axis=1)
    return x, rate


def wav_bytes(wave_data: np.ndarray, rate: int) -> bytes:
    """A mono waveform in [-1, 1] as the bytes of a 16-bit PCM WAV file."""
    import io

    x = np.asarray(wave_data, dtype=np.float32)
    if x.ndim != 1:
        raise InvalidInput(f"a WAV needs a mono 1-D waveform, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidInput("waveform contains NaN or inf; refusing to write it")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
    return buf.getvalue()


def write_wav(path: str | os.PathLike, wave_data: np.ndarray, rate: int) -> None:
    """Write 16-bit PCM atomically: a partial file never replaces a good one."""
    try:
        data = wav_bytes(wave_data, rate)
    except ValueError as e:
        raise InvalidInput(f"{path}: {e}") from None
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly); identity when the rates match."""
    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)
