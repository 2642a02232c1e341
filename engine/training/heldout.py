"""Held-out DSM loss per sigma band: the same objective as training, on clips the score network never sees,
at fixed noise levels and fixed noise, so values are comparable across snapshots, runs and score models."""
from __future__ import annotations

import math
import time

import torch

from ..diffusion.score_model import GuidedDenoiser
from ..diffusion.sde import SDEConfig
from ..errors import InvalidInput
from .score import dsm_loss

# Band edges (sigma, in the normalised log-Mel space the SDE runs in): fine detail, the mid range where
# the EDM training density puts most of its mass, and the coarse/near-prior range.
BAND_EDGES = (0.002, 0.1, 1.0, 10.0, 80.0)
LEVELS_PER_BAND = 3

# By default the held-out points of a run may take this share of its --seconds (they run outside the training
# time): as many test clips as fit, at most HELDOUT_MAX_CLIPS, none when fewer than HELDOUT_MIN_CLIPS fit.
HELDOUT_SHARE = 0.1
HELDOUT_MAX_CLIPS = 250
HELDOUT_MIN_CLIPS = 8


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def band_sigmas(cfg: SDEConfig, per_band: int = LEVELS_PER_BAND) -> dict[str, list[float]]:
    """Log-spaced noise levels inside each band (edges clipped to the SDE's range; empty bands dropped)."""
    edges = [min(max(e, cfg.sigma_min), cfg.sigma_max) for e in BAND_EDGES]
    bands = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        step = (math.log(hi) - math.log(lo)) / per_band
        bands[band_name(lo, hi)] = [math.exp(math.log(lo) + (i + 0.5) * step) for i in range(per_band)]
    return bands


class HeldOutDSM:
    """``HeldOutDSM(x0, sde)(model)`` -> {band: mean EDM-weighted DSM loss, "all": mean over bands}.

    x0: (N, 1, F, T) normalised held-out spectrograms. The noise for level i is drawn from ``seed + i``,
    so every call sees the same perturbed inputs."""

    def __init__(self, x0: torch.Tensor, sde: SDEConfig, seed: int = 0, batch_size: int = 50,
                 per_band: int = LEVELS_PER_BAND):
        if x0.dim() != 4 or len(x0) == 0:
            raise InvalidInput(f"held-out clips must be a non-empty (N, 1, F, T) tensor, got {tuple(x0.shape)}")
        self.x0, self.sde, self.seed, self.batch_size = x0, sde, seed, batch_size
        self.bands = band_sigmas(sde, per_band)

    @torch.no_grad()
    def level_loss(self, model: GuidedDenoiser, sigma: float, seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.x0.shape, generator=gen)
        total = 0.0
        for i in range(0, len(self.x0), self.batch_size):
            x0, n = self.x0[i:i + self.batch_size], noise[i:i + self.batch_size]
            total += float(dsm_loss(model, x0, torch.full((len(x0),), sigma), n)) * len(x0)
        return total / len(self.x0)

    def __call__(self, model: GuidedDenoiser) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            out, level = {}, 0
            for name, sigmas in self.bands.items():
                losses = []
                for sigma in sigmas:
                    losses.append(self.level_loss(model, sigma, self.seed + level))
                    level += 1
                out[name] = sum(losses) / len(losses)
        finally:
            model.train(was_training)
        out["all"] = sum(out.values()) / len(out)
        return out


def affordable_clips(seconds_per_clip_level: float, levels: int, points: int, budget_s: float,
                     most: int = HELDOUT_MAX_CLIPS) -> int:
    """How many held-out clips ``points`` evaluations at ``levels`` noise levels each can use within ``budget_s``,
    at ``seconds_per_clip_level`` (measured); 0 when fewer than ``HELDOUT_MIN_CLIPS`` fit."""
    if seconds_per_clip_level <= 0 or levels <= 0 or points <= 0:
        raise InvalidInput("held-out cost, levels and points must be positive")
    n = min(most, int(budget_s / (seconds_per_clip_level * levels * points)))
    return n if n >= HELDOUT_MIN_CLIPS else 0


def seconds_per_clip_level(model: GuidedDenoiser, x0: torch.Tensor, sde: SDEConfig) -> float:
    """The measured cost of one held-out clip at one noise level for ``model`` (``x0``: a few clips)."""
    probe = HeldOutDSM(x0, sde)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        probe.level_loss(model, 1.0, 0)
        return (time.perf_counter() - t0) / len(x0)
    finally:
        model.train(was_training)
