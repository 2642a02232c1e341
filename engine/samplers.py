"""Reverse-SDE samplers over a score callable ``score_fn(x, sigma) -> score`` (guidance is the caller's).

Each solver is a step function over preallocated tensors; all noise for the run is drawn up front
(``draw_noise``), the sigma schedule lives on the host, and no step synchronises with the host or branches
on tensor values, so a step can be captured in a CUDA graph and replayed with the same buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("euler_maruyama", "pc", "heun")


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "pc"
    steps: int = 50
    snr: float = 0.05  # Langevin corrector signal-to-noise ratio (Song et al. 2021)
    corrector_steps: int = 1

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; expected one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class Noise:
    """Every random draw of a run: the prior sample, one predictor draw and the corrector draws per step."""

    prior: torch.Tensor  # (B, ...)
    predictor: torch.Tensor  # (steps, B, ...)
    corrector: torch.Tensor  # (steps, corrector_steps, B, ...)


def draw_noise(shape: tuple[int, ...], spec: SamplerSpec, generator: torch.Generator, device="cpu") -> Noise:
    n_corr = spec.corrector_steps if spec.name == "pc" else 0
    prior = torch.randn(shape, generator=generator)
    pred = torch.randn((spec.steps, *shape), generator=generator)
    corr = torch.randn((spec.steps, n_corr, *shape), generator=generator)
    return Noise(prior.to(device), pred.to(device), corr.to(device))


def _per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.expand(x.shape[0])


def euler_maruyama_step(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                        z: torch.Tensor) -> torch.Tensor:
    """VE reverse SDE from sigma to sigma_next: x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z."""
    var = sigma ** 2 - sigma_next ** 2
    return x + var * score_fn(x, _per_sample(sigma, x)) + torch.sqrt(var) * z


def langevin_step(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, snr: float) -> torch.Tensor:
    """One Langevin corrector step at fixed sigma; the step size comes from the score and noise norms
    (computed on-device, no host sync)."""
    g = score_fn(x, _per_sample(sigma, x))
    g_norm = g.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
    z_norm = z.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
    eps = 2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
    return x + eps * g + torch.sqrt(2 * eps) * z


def heun_step(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
              last: bool) -> torch.Tensor:
    """EDM's deterministic 2nd-order step of the probability-flow ODE dx/dsigma = -sigma * score.

    ``last`` is a host-side schedule fact (sigma_next == 0), never read from a tensor.
    """
    d = -sigma * score_fn(x, _per_sample(sigma, x))
    x_next = x + (sigma_next - sigma) * d
    if last:
        return x_next
    d2 = -sigma_next * score_fn(x_next, _per_sample(sigma_next, x))
    return x + (sigma_next - sigma) * 0.5 * (d + d2)


def sample(score_fn: ScoreFn, sigmas: torch.Tensor, noise: Noise, spec: SamplerSpec,
           denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] == 0. ``sigmas`` has steps + 1 entries (host tensor).

    For the stochastic samplers, the final step to sigma = 0 is a denoising step (Tweedie: x + s^2 score),
    which ``euler_maruyama_step`` with sigma_next = 0 and no noise term would equal; the noise draw of that
    step is multiplied by 0 so the captured step stays uniform.
    """
    if len(sigmas) != spec.steps + 1:
        raise ValueError(f"schedule has {len(sigmas)} levels, expected steps + 1 = {spec.steps + 1}")
    device = noise.prior.device
    sig = sigmas.to(device)
    x = noise.prior * sig[0]
    for i in range(spec.steps):
        s, s_next = sig[i], sig[i + 1]
        if spec.name == "heun":
            x = heun_step(score_fn, x, s, s_next, last=(i == spec.steps - 1))
        else:
            if spec.name == "pc":
                for j in range(spec.corrector_steps):
                    x = langevin_step(score_fn, x, s, noise.corrector[i, j], spec.snr)
            z = noise.predictor[i] * (0.0 if i == spec.steps - 1 else 1.0)
            x = euler_maruyama_step(score_fn, x, s, s_next, z)
        if progress is not None:
            progress(i)
    return x
