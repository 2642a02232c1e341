"""Solvers of the reverse VE SDE / probability-flow ODE in denoiser form (k-diffusion's pattern).

A solver sees only ``model(x, sigma) -> D(x; sigma)`` (guided or not, it cannot tell), the host-side sigma
schedule and pre-drawn noise. Each registered solver is one step function with the shared signature

    step(model, x, coef, noise, state, final) -> (x_next, denoised)

plus a host function that turns the schedule into a table of per-step coefficients (``coef`` is one row,
on the device). Everything a step needs that varies from step to step is in ``coef`` and ``noise``; the
only host-side fact is ``final`` (a step to sigma = 0, read off the host schedule), and multistep history
lives in ``state``
buffers updated in place. So the eager loop (``sample``) and the static-buffer runner that CUDA graphs
capture (``engine.diffusion.captured``) run the very same step functions, and no step synchronises with
the host or branches on tensor values.

Adding a solver: write its coefficient function (and a step function, unless an existing one fits) and
``register`` it once; the CLI's choices are read from ``SOLVERS``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from .denoiser import to_d, to_score
from ..errors import InvalidInput
from .sde import per_sample

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step index, sigma of the step (host float), denoised estimate D of the step's first evaluation)
Callback = Callable[[int, float, torch.Tensor], None]


def _sigma(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return coef[0].expand(x.shape[0])


# ------------------------------------------------------------------------------------------ step functions

def linear_step(model: Denoiser, x, coef, noise, state, final):
    """x_next = a x + b D + c (D - D_prev) + n z with coef = (sigma, a, b, c, n).

    One evaluation. Covers Euler-Maruyama, Euler ancestral and DPM-Solver++(2M) and (2M) SDE: they differ
    only in their coefficients (and in whether they keep D_prev or draw z)."""
    sigma, a, b, c, n = coef.unbind()
    d = model(x, _sigma(coef, x))
    x_next = a * x + b * d
    if "prev" in state:
        x_next = x_next + c * (d - state["prev"])
        state["prev"].copy_(d)
    if noise.shape[0]:
        x_next = x_next + n * noise[0]
    return x_next, d


def heun_step(model: Denoiser, x, coef, noise, state, final):
    """EDM's Algorithm 2 step, coef = (sigma, sigma_hat, sigma_next, churn): raise the noise level to
    sigma_hat by adding churn * z (when the solver draws noise), an Euler step of the probability-flow ODE to
    sigma_next, then Heun's correction, except on the final step to sigma = 0."""
    _, sigma_hat, sigma_next, churn = coef.unbind()
    x_hat = x + churn * noise[0] if noise.shape[0] else x
    d = model(x_hat, sigma_hat.expand(x.shape[0]))
    slope = to_d(x_hat, sigma_hat.expand(x.shape[0]), d)
    x_next = x_hat + (sigma_next - sigma_hat) * slope
    if final:
        return x_next, d
    slope2 = to_d(x_next, sigma_next.expand(x.shape[0]), model(x_next, sigma_next.expand(x.shape[0])))
    return x_hat + (sigma_next - sigma_hat) * 0.5 * (slope + slope2), d


def predictor_corrector_step(model: Denoiser, x, coef, noise, state, final):
    """Langevin corrector(s) at sigma, then an Euler-Maruyama predictor (Song et al. 2021);
    coef = (sigma, a, b, n, snr), noise = (correctors + 1, B, ...), the predictor's draw last. The
    corrector's step size comes from per-sample score and noise norms, computed on the device."""
    sigma, a, b, n, snr = coef.unbind()
    s = _sigma(coef, x)
    first = None
    for j in range(noise.shape[0] - 1):
        d = model(x, s)
        first = d if first is None else first
        g, z = to_score(x, s, d), noise[j]
        g_norm = per_sample(g.flatten(1).norm(dim=1), x)
        z_norm = per_sample(z.flatten(1).norm(dim=1), x)
        eps = 2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
        x = x + eps * g + torch.sqrt(2 * eps) * z
    d = model(x, s)
    return a * x + b * d + n * noise[-1], (d if first is None else first)


# ------------------------------------------------------------------------------ coefficient functions
# Each takes the host schedule sigmas (steps + 1,) float64 (decreasing, usually ending in 0) and the solver's
# options, and returns the (steps, k) coefficient table. Step i goes from s = sigmas[i] to s' = sigmas[i + 1].

def _pairs(sigmas: np.ndarray):
    return sigmas[:-1], sigmas[1:]


def euler_maruyama_coefficients(sigmas, **_):
    """VE reverse SDE: x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z = (s'/s)^2 x + (1 - (s'/s)^2) D + ... ;
    the final step to 0 is the denoising (Tweedie) step D, with its noise multiplied by 0."""
    s, s1 = _pairs(sigmas)
    a = (s1 / s) ** 2
    n = np.sqrt(s ** 2 - s1 ** 2) * (s1 > 0)
    return np.stack([s, a, 1 - a, np.zeros_like(s), n], axis=1)


def euler_ancestral_coefficients(sigmas, eta: float = 1.0, **_):
    """k-diffusion's Euler ancestral: an Euler step to sigma_down, then fresh noise of std sigma_up."""
    s, s1 = _pairs(sigmas)
    up = np.minimum(s1, eta * np.sqrt(np.clip(s1 ** 2 * (s ** 2 - s1 ** 2) / s ** 2, 0, None)))
    down = np.sqrt(s1 ** 2 - up ** 2)
    return np.stack([s, down / s, 1 - down / s, np.zeros_like(s), up], axis=1)


def _log_steps(sigmas):
    """h_i = log(s_i / s_{i+1}) (inf on the final step), and r_i = h_{i-1} / h_i where a previous step exists."""
    s, s1 = _pairs(sigmas)
    with np.errstate(divide="ignore"):
        h = np.log(s) - np.log(s1)
    r = np.full_like(h, np.nan)
    r[1:] = h[:-1] / h[1:]
    return s, s1, h, r


def _second_order_allowed(h: np.ndarray) -> np.ndarray:
    """Where a multistep correction applies: not the first step (no history) and not the final step to 0
    (the lower-order final step recommended for large guidance scales, Lu et al. 2022b)."""
    ok = np.isfinite(h)
    ok[0] = False
    return ok


def dpmpp_2m_coefficients(sigmas, **_):
    """DPM-Solver++(2M) (Lu et al. 2022b; k-diffusion ``sample_dpmpp_2m``):
    x' = (s'/s) x + (1 - s'/s) (D + (D - D_prev) / (2 r))."""
    s, s1, h, r = _log_steps(sigmas)
    b = 1 - s1 / s
    c = np.where(_second_order_allowed(h), b / (2 * np.where(np.isfinite(r) & (r > 0), r, 1.0)), 0.0)
    return np.stack([s, s1 / s, b, c, np.zeros_like(s)], axis=1)


def dpmpp_2m_sde_coefficients(sigmas, eta: float = 1.0, **_):
    """DPM-Solver++(2M) SDE, midpoint variant (k-diffusion ``sample_dpmpp_2m_sde``):
    x' = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + 0.5 (1 - e^{-(1+eta) h}) (D - D_prev) / r
         + s' sqrt(1 - e^{-2 eta h}) z."""
    s, s1, h, r = _log_steps(sigmas)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.where(s1 > 0, (s1 / s) * np.exp(-eta * h), 0.0)
        b = np.where(s1 > 0, -np.expm1(-(1 + eta) * h), 1.0)
        n = np.where(s1 > 0, s1 * np.sqrt(np.clip(-np.expm1(-2 * eta * h), 0, None)), 0.0)
    c = np.where(_second_order_allowed(h), 0.5 * b / np.where(np.isfinite(r) & (r > 0), r, 1.0), 0.0)
    return np.stack([s, a, b, c, n], axis=1)


def heun_coefficients(sigmas, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                      s_noise: float = 1.0, **_):
    """EDM's sampler: gamma_i = min(S_churn / N, sqrt(2) - 1) for S_tmin <= s <= S_tmax, s_hat = s (1 + gamma_i),
    churn = S_noise sqrt(s_hat^2 - s^2). S_churn = 0 is the deterministic 2nd-order Heun sampler."""
    s, s1 = _pairs(sigmas)
    steps = len(s)
    gamma = np.where((s >= s_tmin) & (s <= s_tmax), min(s_churn / steps, math.sqrt(2) - 1), 0.0)
    s_hat = s * (1 + gamma)
    return np.stack([s, s_hat, s1, s_noise * np.sqrt(s_hat ** 2 - s ** 2)], axis=1)


def multistep_coefficients(sigmas, **_):
    """Multistep sampling of a distilled student that maps x_t to its teacher's ODE endpoint (consistency
    models' Algorithm 1, Song et al. 2023): x' = D(x; s) + s' z, i.e. jump to the endpoint and re-inject
    fresh noise at the next level; the final step is D itself."""
    s, s1 = _pairs(sigmas)
    return np.stack([s, np.zeros_like(s), np.ones_like(s), np.zeros_like(s), s1], axis=1)


def pc_coefficients(sigmas, snr: float = 0.05, **_):
    s, a, b, _, n = euler_maruyama_coefficients(sigmas).T
    return np.stack([s, a, b, n, np.full_like(s, snr)], axis=1)


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Solver:
    name: str
    step: Callable
    coefficients: Callable[..., np.ndarray]
    description: str
    evals_per_step: int = 1
    final_evals: int = 1  # evaluations on the final step (Heun skips its correction there)
    noise_per_step: int = 0
    history: bool = False  # keeps the previous step's D in state["prev"]
    defaults: Mapping[str, float] = field(default_factory=dict)
    # its schedule stops one level above sigma_min: the Karras levels of steps + 1 evaluations without the last
    # (a solver whose every step is a full denoising jump would waste its final evaluation at sigma_min)
    stops_above_sigma_min: bool = False

    def nfe(self, steps: int) -> int:
        """Score evaluations of a run of ``steps`` steps."""
        return (steps - 1) * self.evals_per_step + self.final_evals

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose evaluations fit in ``nfe``."""
        if nfe < self.final_evals:
            raise InvalidInput(f"{self.name} needs at least {self.final_evals} evaluations, got nfe={nfe}")
        return 1 + (nfe - self.final_evals) // self.evals_per_step

    def options(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        unknown = set(overrides or {}) - set(self.defaults)
        if unknown:
            raise InvalidInput(f"solver {self.name!r} has no option(s) {sorted(unknown)}; it takes {sorted(self.defaults)}")
        return {**self.defaults, **(overrides or {})}

    def table(self, sigmas: torch.Tensor, overrides: Mapping[str, float] | None = None, device="cpu") -> torch.Tensor:
        """The (steps, k) float32 coefficient table of schedule ``sigmas`` on ``device``."""
        sig = sigmas.detach().cpu().double().numpy()
        if len(sig) < 2 or sig[-1] < 0 or not np.all(sig[:-1] > sig[1:]):
            raise InvalidInput("a schedule needs >= 2 strictly decreasing sigmas >= 0")
        return torch.from_numpy(self.coefficients(sig, **self.options(overrides))).float().to(device)

    def coefficient_width(self) -> int:
        """Columns of the coefficient table (the size of a step's ``coef`` row)."""
        return self.coefficients(np.array([2.0, 1.0, 0.0]), **self.defaults).shape[1]

    def init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prev": torch.zeros_like(x)} if self.history else {}


SOLVERS: dict[str, Solver] = {}


def register(solver: Solver) -> Solver:
    if solver.name in SOLVERS:
        raise InvalidInput(f"solver {solver.name!r} is registered already")
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name: str) -> Solver:
    if not isinstance(name, str) or name not in SOLVERS:
        raise InvalidInput(f"unknown sampler {name!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[name]


register(Solver("euler_maruyama", linear_step, euler_maruyama_coefficients,
                "Euler-Maruyama on the VE reverse SDE, 1 evaluation per step", noise_per_step=1))
register(Solver("euler_ancestral", linear_step, euler_ancestral_coefficients,
                "Euler ancestral (k-diffusion), 1 evaluation per step", noise_per_step=1, defaults={"eta": 1.0}))
register(Solver("dpmpp_2m", linear_step, dpmpp_2m_coefficients,
                "DPM-Solver++(2M), deterministic, lower-order final step", history=True))
register(Solver("dpmpp_2m_sde", linear_step, dpmpp_2m_sde_coefficients,
                "DPM-Solver++(2M) SDE (midpoint), lower-order final step", noise_per_step=1, history=True,
                defaults={"eta": 1.0}))
register(Solver("heun", heun_step, heun_coefficients,
                "EDM's deterministic 2nd-order Heun, 2 evaluations per step (1 on the last)",
                evals_per_step=2, final_evals=1))
register(Solver("heun_churn", heun_step, heun_coefficients,
                "EDM's stochastic sampler: Heun with churn (S_churn, S_tmin, S_tmax, S_noise)",
                evals_per_step=2, final_evals=1, noise_per_step=1,
                defaults={"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}))
register(Solver("multistep", linear_step, multistep_coefficients,
                "distilled students: jump to the endpoint, re-inject noise at the next level (consistency "
                "models' multistep sampling), 1 evaluation per step", noise_per_step=1, stops_above_sigma_min=True))
register(Solver("pc", predictor_corrector_step, pc_coefficients,
                "predictor-corrector: 1 Langevin corrector + Euler-Maruyama, 2 evaluations per step",
                evals_per_step=2, final_evals=2, noise_per_step=2, defaults={"snr": 0.05}))


@dataclass(frozen=True)
class SamplerSpec:
    """What a run of sampling is: the solver, its steps, the Karras schedule's rho (None: the SDE's) and
    overrides of the solver's options. ``nfe`` is the user-facing budget: score evaluations per clip."""

    solver: str
    steps: int
    rho: float | None = None
    options: tuple[tuple[str, float], ...] = ()
    fade_sigma: float | None = None  # the guidance fade (engine.diffusion.guidance); None: the checkpoint's

    def __post_init__(self):
        solver = get_solver(self.solver)
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise InvalidInput(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.rho is not None and not (isinstance(self.rho, (int, float)) and math.isfinite(self.rho) and self.rho > 0):
            raise InvalidInput(f"rho must be a finite number > 0, got {self.rho!r}")
        if self.fade_sigma is not None and not (isinstance(self.fade_sigma, (int, float))
                                                and not isinstance(self.fade_sigma, bool)
                                                and math.isfinite(self.fade_sigma) and self.fade_sigma >= 0):
            raise InvalidInput(f"fade_sigma must be a finite number >= 0, got {self.fade_sigma!r}")
        solver.options(dict(self.options))

    @classmethod
    def from_nfe(cls, solver: str, nfe: int, rho: float | None = None, options=(),
                 fade_sigma: float | None = None) -> "SamplerSpec":
        if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
            raise InvalidInput(f"nfe must be an integer >= 1, got {nfe!r}")
        return cls(solver, get_solver(solver).steps_for_nfe(int(nfe)), rho, tuple(options), fade_sigma)

    @property
    def nfe(self) -> int:
        return get_solver(self.solver).nfe(self.steps)

    def schedule(self, sde) -> torch.Tensor:
        from .sde import karras_schedule

        if get_solver(self.solver).stops_above_sigma_min:
            levels = karras_schedule(self.steps + 1, sde, rho=self.rho)
            return torch.cat([levels[:-2], levels[-1:]])
        return karras_schedule(self.steps, sde, rho=self.rho)

    def label(self) -> str:
        extra = "".join(f", {k}={v:g}" for k, v in self.options) + (f", rho={self.rho:g}" if self.rho else "") \
            + (f", fade={self.fade_sigma:g}" if self.fade_sigma else "")
        return f"{self.solver} ({self.steps} steps, {self.nfe} NFE{extra})"


# ------------------------------------------------------------------------------------------ the eager loop

def sample(model: Denoiser, sigmas: torch.Tensor, noise, solver: str | Solver,
           options: Mapping[str, float] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] (usually 0) with ``solver``. ``noise`` is a
    ``engine.diffusion.noise.Noise`` of matching steps and draws per step (``draw_noise``)."""
    solver = get_solver(solver) if isinstance(solver, str) else solver
    check_noise(noise, solver, len(sigmas) - 1)
    table = solver.table(sigmas, options, noise.prior.device)  # host -> device once, before the loop
    return run_steps(model, solver, table, sigmas.tolist(), noise, callback)


def run_steps(model: Denoiser, solver: Solver, table: torch.Tensor, sigmas: list[float], noise,
              callback: Callback | None = None) -> torch.Tensor:
    """The loop itself: no host reads, no host data (what ``sample`` runs after building the table)."""
    x = noise.prior * table[0, 0]
    state = solver.init_state(x)
    for i in range(len(sigmas) - 1):
        x, denoised = solver.step(model, x, table[i], noise.steps[i], state, sigmas[i + 1] == 0)
        if callback is not None:
            callback(i, sigmas[i], denoised)
    return x


def check_noise(noise, solver: Solver, steps: int) -> None:
    want = (steps, solver.noise_per_step)
    if tuple(noise.steps.shape[:2]) != want or noise.steps.shape[2:] != noise.prior.shape:
        raise InvalidInput(f"noise drawn for {tuple(noise.steps.shape[:2])} (steps, draws per step) of batch "
                           f"{tuple(noise.steps.shape[2:])}; {solver.name} over {steps} steps needs {want} of "
                           f"{tuple(noise.prior.shape)}")
