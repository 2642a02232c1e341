"""Distil a guided teacher into a few-step student that takes the label and gamma as inputs.

One stage does both distillations of Meng et al. (2023, "On Distillation of Guided Diffusion Models"):
- guidance: the student D_s(x; sigma, y, gamma) reproduces the *guided* teacher, so sampling needs no
  guidance cotangent (tapdiff's student keeps one forward and a one-cotangent adjoint for its taps; the
  two-model student drops the classifier from sampling entirely). The label reaches tapdiff's student
  twice: through its condition embedding, and (``SubnetConfig.guided_taps``, the default) through its taps,
  whose one cotangent is logsumexp + gamma log p(y | x) (``TapExtractor.steered``); the two-model student
  has only the embedding, which ``condition_lr_scale`` can train faster than the rest;
- steps: the student learns the map from x at a noise level to the endpoint of the teacher's guided
  probability-flow ODE from there (knowledge distillation of Luhman and Luhman 2021, at every level), and
  samples with ``multistep`` (``engine.diffusion.solvers``): jump to the endpoint, re-inject fresh noise at
  the next level, as consistency models do. The re-injected noise is meant to keep the student from
  inheriting the deterministic ODE's ~0.87 recognised fraction wholesale (each jump starts from a fresh noisy
  state); the shipped students, undertrained, do not reach that (``benchmarks/results/distill_quality.md``).

The teacher's trajectories are generated first (DPM-Solver++(2M), deterministic; every state the solver
visits is recorded with the trajectory's endpoint), in seeded chunks written one file each, so an
interrupted run resumes where it stopped and a chunk never depends on when it was made. Training then
regresses the student's denoiser output onto the endpoints with EDM's weighting (the loss on F is unit
weighted), starting from the teacher's weights (the condition embedding starts at zero).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..diffusion.guidance import DEFAULT_GUIDANCE
from ..diffusion.noise import clip_seed, draw_noise
from ..diffusion.score_model import GuidedDenoiser
from ..diffusion.sde import loss_weight
from ..diffusion.solvers import SamplerSpec, get_solver, sample
from ..diffusion.taps import onehot
from ..errors import CheckpointError, InvalidInput
from ..progress import tracked
from ..storage.atomic import make_folder
from ..storage.state_file import load_state, save_state

logger = logging.getLogger(__name__)

UNCONDITIONAL = -1  # the label of a trajectory sampled without guidance (the student gets no label, gamma 0)


@dataclass(frozen=True)
class TrajectorySettings:
    """What the teacher's trajectories are: how many, by which deterministic solver and budget, and how the
    conditions are drawn (a share unconditional, a share at the default gamma, the rest uniform in
    [0, gamma_max]). Recorded with every chunk; a chunk made with other settings is refused on resume."""

    count: int = 2048
    solver: str = "dpmpp_2m"
    steps: int = 12
    gamma_max: float = 2 * DEFAULT_GUIDANCE
    unconditional_share: float = 0.2
    default_gamma_share: float = 0.4
    chunk: int = 128
    seed: int = 0

    def __post_init__(self):
        solver = get_solver(self.solver)
        if solver.noise_per_step or solver.evals_per_step != 1:
            raise InvalidInput(f"teacher trajectories need a deterministic one-evaluation-per-step solver, got {self.solver!r}")
        if not (self.count >= 1 and self.steps >= 2 and self.chunk >= 1 and self.gamma_max >= DEFAULT_GUIDANCE
                and 0 <= self.unconditional_share and 0 <= self.default_gamma_share
                and self.unconditional_share + self.default_gamma_share <= 1):
            raise InvalidInput(f"invalid trajectory settings {self}")

    def record(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Trajectories:
    states: torch.Tensor  # (N, L, 1, n_mels, frames): x at each of the teacher's L levels
    sigmas: torch.Tensor  # (L,) the levels
    endpoints: torch.Tensor  # (N, 1, n_mels, frames): where the teacher's guided ODE ends
    labels: torch.Tensor  # (N,) digit, or UNCONDITIONAL
    gammas: torch.Tensor  # (N,) guidance strength (0 for unconditional)

    def __len__(self) -> int:
        return len(self.endpoints)

    def split(self, held_out: int) -> tuple["Trajectories", "Trajectories"]:
        """(training, held-out): the last ``held_out`` trajectories are held out."""
        n = len(self) - held_out
        if n < 1 or held_out < 0:
            raise InvalidInput(f"cannot hold out {held_out} of {len(self)} trajectories")
        part = lambda s: Trajectories(self.states[s], self.sigmas, self.endpoints[s], self.labels[s], self.gammas[s])
        return part(slice(0, n)), part(slice(n, None))

    def conditioning(self, idx: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(onehot, gamma) the student gets for trajectories ``idx``: no label for unconditional ones."""
        labels = self.labels[idx]
        oh = onehot(labels.clamp_min(0), n_classes) * (labels >= 0).float()[:, None]
        return oh, self.gammas[idx]


def draw_conditions(n: int, labels: tuple[int, ...], settings: TrajectorySettings, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, gammas) of ``n`` trajectories (see ``TrajectorySettings``)."""
    digits = torch.tensor(labels)[torch.randint(len(labels), (n,), generator=gen)]
    u = torch.rand(n, generator=gen)
    gammas = torch.rand(n, generator=gen) * settings.gamma_max
    uncond = u < settings.unconditional_share
    default = ~uncond & (u < settings.unconditional_share + settings.default_gamma_share)
    gammas = torch.where(default, torch.full_like(gammas, DEFAULT_GUIDANCE), gammas)
    gammas = torch.where(uncond, torch.zeros_like(gammas), gammas)
    return torch.where(uncond, torch.full_like(digits, UNCONDITIONAL), digits), gammas


@torch.no_grad()
def teacher_chunk(teacher: GuidedDenoiser, labels: torch.Tensor, gammas: torch.Tensor, seeds: list[int],
                  settings: TrajectorySettings, hw: tuple[int, int], batch: int) -> dict:
    """The teacher's guided ODE from sigma_max for each (label, gamma, seed): states at every level, endpoints."""
    spec = SamplerSpec(settings.solver, settings.steps)
    sigmas = spec.schedule(teacher.extractor.sde)
    states, ends = [], []
    for i in range(0, len(labels), batch):
        lab, gam = labels[i:i + batch], gammas[i:i + batch]
        oh = onehot(lab.clamp_min(0), teacher.n_classes) * (lab >= 0).float()[:, None]
        seen = []

        def recording(x, sigma, oh=oh, gam=gam, seen=seen):
            seen.append(x.clone())
            return teacher(x, sigma, oh, gam)  # gamma 0 rows: D + 0, the unguided teacher

        noise = draw_noise(seeds[i:i + batch], (1, *hw), settings.steps, 0)
        ends.append(sample(recording, sigmas, noise, settings.solver))
        states.append(torch.stack(seen, dim=1))
    return {"states": torch.cat(states), "endpoints": torch.cat(ends), "labels": labels, "gammas": gammas,
            "sigmas": sigmas[:-1].float()}


def teacher_trajectories(teacher: GuidedDenoiser, labels: tuple[int, ...], settings: TrajectorySettings,
                         hw: tuple[int, int], folder: Path, teacher_id: str, batch: int = 64,
                         progress: bool = True) -> tuple[Trajectories, float]:
    """All of the teacher's trajectories, generated chunk by chunk into ``folder`` (one state file each,
    resumed from what is there); returns them with the seconds spent generating in this call."""
    make_folder(folder)
    record = {"settings": settings.record(), "teacher": teacher_id, "labels": list(labels)}
    parts, seconds = [], 0.0
    chunks = range(0, settings.count, settings.chunk)
    for c in tracked(chunks, logger, "teacher trajectories", unit="chunks", enabled=progress):
        path = folder / f"chunk_{c // settings.chunk:04d}.state.safetensors"
        if path.exists():
            part = load_state(path)
            if part.get("record") != record:
                raise CheckpointError(f"{path} holds trajectories of another teacher or other settings; delete "
                                      f"{folder} to generate them afresh")
        else:
            n = min(settings.chunk, settings.count - c)
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + c)
            lab, gam = draw_conditions(n, labels, settings, gen)
            t0 = time.monotonic()
            part = teacher_chunk(teacher, lab, gam, [clip_seed(settings.seed, c + k) for k in range(n)], settings,
                                 hw, batch)
            part["seconds"] = time.monotonic() - t0
            part["record"] = record
            save_state(path, part)
        parts.append(part)
        seconds += float(part["seconds"])
    cat = lambda key: torch.cat([p[key] for p in parts])
    return Trajectories(cat("states"), parts[0]["sigmas"], cat("endpoints"), cat("labels"), cat("gammas")), seconds


def distillation_loss(student: GuidedDenoiser, data: Trajectories, idx: torch.Tensor, level: torch.Tensor
                      ) -> torch.Tensor:
    """lambda(sigma) * ||D_s(x_level; sigma, y, gamma) - endpoint||^2 (EDM's weighting: unit weight on F)."""
    x, sigma = data.states[idx, level], data.sigmas[level]
    oh, gamma = data.conditioning(idx, student.n_classes)
    err = (student(x, sigma, oh, gamma) - data.endpoints[idx]) ** 2
    return (loss_weight(sigma, student.extractor.sde) * err.mean(dim=(1, 2, 3))).mean()


def batch_draw(data: Trajectories, batch: int) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """(trajectory indices, level indices) of a training batch, every level equally likely."""
    levels = len(data.sigmas)
    return lambda gen: (torch.randint(len(data), (batch,), generator=gen),
                        torch.randint(levels, (batch,), generator=gen))


class HeldOutDistillation:
    """The distillation loss on held-out trajectories at every level, fixed inputs: {level sigma: loss, "all"}."""

    def __init__(self, data: Trajectories, batch: int = 64):
        self.data, self.batch = data, batch

    @torch.no_grad()
    def __call__(self, student: GuidedDenoiser) -> dict[str, float]:
        was = student.training
        student.eval()
        out = {}
        try:
            for lv, s in enumerate(self.data.sigmas.tolist()):
                total = 0.0
                for i in range(0, len(self.data), self.batch):
                    idx = torch.arange(i, min(i + self.batch, len(self.data)))
                    total += float(distillation_loss(student, self.data, idx, torch.full_like(idx, lv))) * len(idx)
                out[f"{s:.3g}"] = total / len(self.data)
        finally:
            student.train(was)
        out["all"] = sum(out.values()) / len(out)
        return out


def init_from_teacher(student_net: torch.nn.Module, teacher_net: torch.nn.Module) -> None:
    """The teacher's weights in the student; only the condition embedding (which starts at zero) is new."""
    missing, unexpected = student_net.load_state_dict(teacher_net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("cond_embed.") for k in missing):
        raise InvalidInput(f"student does not extend its teacher: missing {missing}, unexpected {unexpected}")


def condition_parameters(student_net: torch.nn.Module) -> list[str]:
    """Name prefixes of what carries the student's new inputs into the network: the condition embedding and every
    FiLM layer (which turns the embedding into per-channel scales and shifts)."""
    return ["cond_embed."] + [f"{n}." for n, m in student_net.named_modules() if n.rsplit(".", 1)[-1] == "film"
                              and isinstance(m, torch.nn.Linear)]
