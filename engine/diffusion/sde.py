"""VE SDE in EDM's sigma parameterisation: noise levels, preconditioning, training draws, sampling schedule.

Why EDM-style rather than Song's VE with a raw score net: the forward process is the same VE SDE
(x_t = x_0 + sigma * n), but EDM's preconditioning makes the network's input and target unit-variance at
every sigma, and its loss weight lambda(sigma) = 1/sigma^2 + 1/sigma_data^2 is the usual DSM sigma^2
weighting of the score loss times (1 + sigma^2 / sigma_data^2), which evens out the loss across noise
levels. Both matter most on a small training budget.
"""
from __future__ import annotations

import math

import torch

from kernels import per_row

from ..errors import InvalidInput
from ..storage.config import SDEConfig


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values (B,) broadcast against x (B, ...): the one way sigma and friends meet a batch."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def precondition(sigma: torch.Tensor, cfg: SDEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) for per-sample sigma of shape (B,), each broadcast to (B, 1, 1, 1)
    except c_noise which stays (B,)."""
    sd2 = cfg.sigma_data ** 2
    s = sigma.reshape(-1, 1, 1, 1)  # per_sample without an x to copy: every image here is (B, 1, n_mels, frames)
    c_skip = sd2 / (s ** 2 + sd2)
    c_out = s * cfg.sigma_data / torch.sqrt(s ** 2 + sd2)
    c_in = 1.0 / torch.sqrt(s ** 2 + sd2)
    c_noise = per_row(torch.log, sigma) / 4.0  # batch-invariant (kernels.rowwise)
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, cfg: SDEConfig) -> torch.Tensor:
    return (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2


def sample_training_sigma(n: int, cfg: SDEConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM log-normal draws (mostly mid-range), clamped to the SDE's range."""
    z = torch.randn(n, generator=generator)
    return torch.exp(cfg.p_mean + cfg.p_std * z).clamp(cfg.sigma_min, cfg.sigma_max)


def sample_classifier_sigma(n: int, cfg: SDEConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Half log-normal, half log-uniform over the whole range: guidance needs the classifier everywhere
    the sampler goes, and the taps need it where the score model is trained."""
    half = n // 2
    lo, hi = torch.log(torch.tensor(cfg.sigma_min)), torch.log(torch.tensor(cfg.sigma_max))
    uniform = torch.exp(lo + (hi - lo) * torch.rand(n - half, generator=generator))
    return torch.cat([sample_training_sigma(half, cfg, generator), uniform])


def perturb(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return x0 + per_sample(sigma, x0) * noise


def karras_schedule(steps: int, cfg: SDEConfig, sigma_max: float | None = None, rho: float | None = None
                    ) -> torch.Tensor:
    """steps noise levels from sigma_max down to sigma_min (rho spacing; default the SDE's rho), then a
    final 0: (steps + 1,) float64 on the host, where the solvers compute their per-step coefficients."""
    if steps < 1:
        raise InvalidInput(f"steps must be >= 1, got {steps}")
    smax = cfg.sigma_max if sigma_max is None else sigma_max
    rho = cfg.rho if rho is None else rho
    if not rho > 0:
        raise InvalidInput(f"rho must be > 0, got {rho}")
    i = torch.arange(steps, dtype=torch.float64)
    inv = 1.0 / rho
    denom = max(steps - 1, 1)
    top = torch.tensor(smax, dtype=torch.float64) ** inv  # a tensor: overflows to inf where a float would raise
    sig = (top + i / denom * (torch.tensor(cfg.sigma_min, dtype=torch.float64) ** inv - top)) ** rho
    # what float64 survives: sigma_max ** (1 / rho) overflows below rho = ln(sigma_max) / ln(float64 max); near it the
    # levels collapse. A usable schedule is finite and strictly decreasing from sigma_max.
    if not (torch.isfinite(sig).all() and (steps == 1 or bool((sig[1:] < sig[:-1]).all()))):
        raise InvalidInput(f"rho {rho:g} gives no usable noise schedule over [{cfg.sigma_min:g}, {smax:g}] "
                           f"(it needs rho > {min_rho(smax):.4g}; 1 to 10 is the useful range)")
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def min_rho(sigma_max: float) -> float:
    """The smallest rho whose schedule float64 can compute: sigma_max ** (1 / rho) must stay finite."""
    return math.log(sigma_max) / math.log(torch.finfo(torch.float64).max)
