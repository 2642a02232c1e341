"""The public API: ``Engine`` loads a checkpoint bundle and generates log-Mels and waveforms."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .audio_io import write_wav
from .bundle import MODEL_NAMES, Bundle, load_bundle
from .captured import StaticStepSampler, can_capture
from .checkpoint import DEFAULT_CHECKPOINT
from .features import log_mel_range
from .guidance import PluginScore, TapdiffScore, guided
from .samplers import SamplerSpec, draw_noise, sample
from .sde import karras_schedule
from .vocoder import make_vocoder

DEFAULT_GUIDANCE = 3.0


@dataclass
class Generation:
    labels: list[int | None]  # requested digit per clip (None: unconditional)
    mels: torch.Tensor  # (N, n_mels, frames) natural-log Mel, de-normalised
    waves: torch.Tensor  # (N, frames * hop)
    sample_rate: int

    def save(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """Write one 16-bit WAV per clip, ``{prefix}{digit}_{index}.wav``; returns the paths."""
        out_dir = Path(out_dir)
        paths, counts = [], {}
        for lab, w in zip(self.labels, self.waves):
            key = "any" if lab is None else str(lab)
            i = counts.get(key, 0)
            counts[key] = i + 1
            p = out_dir / f"{prefix}{key}_{i}.wav"
            write_wav(p, w.numpy(), self.sample_rate)
            paths.append(p)
        return paths


class Engine:
    """Class-conditional speech generation with one frozen classifier as the backbone.

    >>> engine = Engine()                      # the shipped FSDD checkpoint
    >>> out = engine.generate([7], n=2, seed=0)
    >>> out.save("out/")
    """

    def __init__(self, checkpoint: str | Path | None = None, vocoder: str | None = None, batch_size: int = 16,
                 progress: bool = False, hifigan_dir: str | Path | None = None, device: str = "cpu",
                 model: str = "tapdiff"):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to torch")
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODEL_NAMES)}")
        self.model = model
        self.bundle: Bundle = load_bundle(checkpoint or DEFAULT_CHECKPOINT, subnet_name=MODEL_NAMES[model])
        self.bundle.classifier.to(self.device)
        self.bundle.subnet.to(self.device)
        self.batch_size = batch_size
        self.progress = progress
        # tapdiff: taps and guidance from one classifier pass; the x_t-only models get guidance separately
        sub, tx = self.bundle.subnet, self.bundle.extractor
        self.score = TapdiffScore(tx, sub) if sub.uses_taps else PluginScore(sub, tx)
        sampling = self.bundle.config.get("sampling", {})
        # Fallbacks for a checkpoint without a measured choice (benchmarks/choose_sampling.py --write)
        self.default_steps = int(sampling.get("steps", 25))
        self.default_sampler = sampling.get("sampler", "heun")
        self.fade_sigma = float(sampling.get("guidance_fade_sigma", 0.0))
        self.vocoder_name = vocoder or sampling.get("vocoder", "griffin-lim")
        self.vocoder = make_vocoder(self.vocoder_name, self.bundle.features, hifigan_dir)

    @property
    def labels(self) -> tuple[int, ...]:
        return self.bundle.labels

    def _check(self, labels, n, steps, guidance, seed) -> None:
        for y in labels:
            if y is not None and (isinstance(y, bool) or not isinstance(y, (int, np.integer)) or y not in self.labels):
                raise ValueError(f"unknown digit {y!r}; this checkpoint generates {list(self.labels)}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if (not isinstance(guidance, numbers.Real) or isinstance(guidance, bool) or math.isnan(guidance)
                or guidance < 0 or math.isinf(guidance)):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")

    @torch.no_grad()
    def sample_mels(self, labels: Sequence[int | None], steps: int, guidance: float, seed: int,
                    sampler: str | None = None) -> torch.Tensor:
        """Normalised log-Mel samples (N, 1, n_mels, frames), one per entry of ``labels``."""
        feats, sde = self.bundle.features, self.bundle.sde
        spec = SamplerSpec(name=sampler or self.default_sampler, steps=steps)
        sigmas = karras_schedule(steps, sde)
        gen = torch.Generator().manual_seed(seed)
        out = []
        chunks = [list(labels[i:i + self.batch_size]) for i in range(0, len(labels), self.batch_size)]
        bar = tqdm(total=steps * len(chunks), desc="sampling", disable=None if self.progress else True, leave=False)
        for chunk in chunks:
            shape = (len(chunk), 1, feats.n_mels, feats.frames)
            noise = draw_noise(shape, spec, gen, self.device)
            cond = None if any(y is None for y in chunk) or guidance == 0 else torch.tensor(chunk, device=self.device)
            fn = guided(self.score, cond, float(guidance), self.fade_sigma)
            if can_capture(self.device) and spec.name != "heun":
                # CUDA: one captured graph per chunk shape, replayed every step
                out.append(StaticStepSampler(fn, shape, spec, self.device).run(sigmas, noise).cpu())
                bar.update(steps)
            else:
                out.append(sample(fn, sigmas, noise, spec, progress=lambda i: bar.update(1)).cpu())
        bar.close()
        return torch.cat(out)

    def generate(self, labels: int | Sequence[int] | None = None, n: int = 1, steps: int | None = None,
                 guidance: float = DEFAULT_GUIDANCE, seed: int = 0, sampler: str | None = None) -> Generation:
        """``n`` clips per requested digit (``labels=None``: n unconditional clips, guidance ignored)."""
        labels = [None] if labels is None else [labels] if isinstance(labels, (int, np.integer)) else list(labels)
        if not labels:
            raise ValueError("labels is empty: ask for at least one digit")
        steps = self.default_steps if steps is None else steps
        self._check(labels, n, steps, guidance, seed)
        flat = [y for y in labels for _ in range(n)]
        x = self.sample_mels(flat, steps, guidance, seed, sampler)
        mels = self.bundle.normaliser.denormalise(x[:, 0])
        if not torch.isfinite(mels).all():
            raise FloatingPointError("sampling produced NaN or inf; try more steps or lower guidance")
        mels = mels.clamp(*log_mel_range(self.bundle.features))
        waves = torch.cat([self.vocoder(mels[i:i + 16]) for i in range(0, len(mels), 16)])
        return Generation(flat, mels, waves, self.bundle.features.sample_rate)
