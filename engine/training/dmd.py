"""Distribution-matching distillation of a guided teacher into a few-step student (DMD2, Yin et al. 2024,
"Improved Distribution Matching Distillation", arXiv 2405.14867; reference code tianweiy/DMD2,
``main/edm/edm_guidance.py``).

Three networks:
- the generator G: the student (``DistilledDenoiser``: label and gamma as inputs), sampled with ``multistep``
  (jump to the endpoint, re-inject noise at the next level); it starts from the trajectory-regression student;
- the real score: the frozen guided teacher exactly as the default sampler evaluates it (gamma per clip, the
  checkpoint's guidance fade), so the target is the distribution that the stochastic sampler reaches;
- the fake score: a label- and gamma-conditioned copy of the teacher's network (for tapdiff a ScoreSubnet on
  the same JEM taps, so one classifier forward and adjoint serves both scores at a re-noised sample),
  initialised from the teacher (its condition embedding starts at zero) and trained online on G's samples by
  denoising score matching.

One iteration draws conditions, makes G's samples by backward simulation (G's own earlier steps from pure
noise produce the input of a random step k, as ``multistep`` samples), and trains the fake score on them.
Every ``fake_updates``-th iteration after ``warmup`` (the two time-scale rule) G also moves: its sample is
re-noised to a level drawn as DMD2 draws timesteps (uniform in the Karras index between 2% and 98%), and
G's update is the per-sample normalised difference of the fake and real denoisers there, applied as
``0.5 * ||x - sg(x - grad)||^2``. Two optional terms on G, each weighted by its setting: DMD2's GAN term (a head
on the frozen classifier's deepest taps, trained on real clips against G's samples) and DMOSpeech's recognition
loss (the frozen training classifier's cross-entropy for the label at G's lightly re-noised sample).

``DMDTrainer`` holds all of it and its resumable state (all three networks' trainable weights, G's EMA,
both optimisers and the generator); ``engine.training.workflows.distill_student_dmd`` runs it for the CLI.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..diffusion.guidance import apply_guidance
from ..diffusion.score_model import DistilledDenoiser, GuidedDenoiser, build_score_model
from ..diffusion.sde import loss_weight, perturb, precondition, sample_training_sigma
from ..diffusion.solvers import SamplerSpec
from ..diffusion.taps import Taps, onehot
from ..errors import CheckpointError, InvalidInput, NotFinite
from ..storage.config import SDEConfig
from ..storage.state_file import load_state, save_state
from .distill import TrajectorySettings, draw_conditions, init_from_teacher
from .loop import EMA


@dataclass(frozen=True)
class DMDSettings:
    """The recipe: measured choices, recorded with the student."""

    steps: int = 4  # G's multistep sampling steps (one evaluation each)
    batch_size: int = 8
    generator_lr: float = 2e-5
    fake_lr: float = 1e-4
    fake_updates: int = 5  # fake-score updates per G update (DMD2's two time-scale rule)
    warmup: int = 100  # fake-score updates on G's samples before G first moves
    ema: float = 0.99  # G's EMA (few hundred updates: a short half-life)
    min_level: float = 0.02  # DMD2's timestep range, as fractions of the Karras index from sigma_max
    max_level: float = 0.98
    unconditional_share: float = 0.1
    default_gamma_share: float = 0.6  # the engine's default gamma: where the quality rule is judged
    seed: int = 0
    gan_weight: float = 0.0  # DMD2's GAN term on the generator (0: off); its head reads the classifier's taps
    recognition_weight: float = 0.0  # DMOSpeech's recognition loss: the frozen classifier's cross-entropy (0: off)

    def __post_init__(self):
        if not (self.steps >= 1 and self.batch_size >= 1 and self.generator_lr > 0 and self.fake_lr > 0
                and self.fake_updates >= 1 and self.warmup >= 0 and 0 <= self.ema < 1
                and 0 <= self.min_level < self.max_level <= 1 and self.gan_weight >= 0
                and self.recognition_weight >= 0):
            raise InvalidInput(f"invalid DMD settings {self}")

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        for optional_term in ("gan_weight", "recognition_weight"):  # runs without it keep the record they wrote
            if not out[optional_term]:
                del out[optional_term]
        return out

    def conditions(self) -> TrajectorySettings:
        return TrajectorySettings(unconditional_share=self.unconditional_share,
                                  default_gamma_share=self.default_gamma_share)


def dmd_sigma(n: int, sde: SDEConfig, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """DMD2's re-noising levels: a uniform fraction u of the Karras index (sigma_max at 0, sigma_min at 1)."""
    u = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    inv = 1.0 / sde.rho
    return ((sde.sigma_max ** inv + u * (sde.sigma_min ** inv - sde.sigma_max ** inv)) ** sde.rho).float()


# The recognition loss reads the generator's sample lightly re-noised: levels in this range of the Karras index
# (1 is sigma_min), so the classifier judges nearly clean speech at a noise level it was trained on.
RECOGNITION_LEVELS = (0.75, 0.98)


def _copy(taps: Taps) -> Taps:
    """A second reader's view of the same taps (``Taps.take`` releases depths from the view it is given)."""
    return Taps(list(taps.features), list(taps.grads), taps.input_grad, taps.class_gradient, taps.logits)


def fake_network(build: Callable[[object], torch.nn.Module], student_cfg, teacher_net: torch.nn.Module
                 ) -> torch.nn.Module:
    """The fake score's network: the student's architecture (label and gamma inputs; ``build(config)`` makes
    one) reading the teacher's JEM taps (no guidance steered into them), with the teacher's weights. Its
    condition embedding's last layer starts at zero, so it starts as the unguided teacher."""
    if hasattr(student_cfg, "guided_taps"):
        student_cfg = dataclasses.replace(student_cfg, guided_taps=False)
    fake = build(student_cfg)
    init_from_teacher(fake, teacher_net)
    return fake


class TapDiscriminator(torch.nn.Module):
    """DMD2's GAN head, here on the frozen classifier's deepest feature map at a re-noised input (the classifier is
    noise-conditioned, so its features at (x_t, sigma) are what the head reads): a convolution, mean pooling, a
    logit, plus a projection onto the label (all-zero one-hot: no label term)."""

    def __init__(self, channels: int, n_classes: int, width: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.out = torch.nn.Linear(width, 1)
        self.label = torch.nn.Linear(n_classes, width, bias=False)

    def forward(self, feature: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv(F.silu(feature))).mean(dim=(2, 3))
        return self.out(h)[:, 0] + (self.label(onehot) * h).sum(-1)


class DMDTrainer:
    """G, the fake score and the frozen teacher, with one ``iteration`` at a time and resumable state."""

    def __init__(self, teacher: GuidedDenoiser, generator: DistilledDenoiser, fake_net: torch.nn.Module,
                 labels: tuple[int, ...], input_hw: tuple[int, int], settings: DMDSettings,
                 real: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``real``: (normalised clips (N, 1, F, T), their labels (N,)), the real data of the GAN term (needed
        when ``settings.gan_weight`` > 0, never used otherwise)."""
        if not isinstance(generator, DistilledDenoiser):
            raise TypeError("the generator must be a distilled student (label and gamma as inputs)")
        self.teacher, self.generator, self.settings = teacher.eval().requires_grad_(False), generator, settings
        self.labels, self.sde, self.input_hw = tuple(labels), teacher.extractor.sde, tuple(input_hw)
        self.fake = build_score_model(teacher.extractor, fake_net)
        self.g_opt = torch.optim.AdamW(generator.denoiser.net.parameters(), lr=settings.generator_lr,
                                       betas=(0.0, 0.999), weight_decay=0.0)
        self.fake_opt = torch.optim.AdamW(self.fake.denoiser.net.parameters(), lr=settings.fake_lr,
                                          betas=(0.0, 0.999), weight_decay=0.0)
        self.ema = EMA(generator.denoiser.net, settings.ema)
        self.disc = self.disc_opt = None
        if settings.gan_weight > 0:
            if real is None:
                raise InvalidInput("the GAN term needs real clips")
            self.real_x, self.real_labels = real
            self.disc = TapDiscriminator(teacher.extractor.tap_channels[-1], teacher.n_classes)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=settings.fake_lr, betas=(0.0, 0.999),
                                              weight_decay=0.0)
        self.levels = SamplerSpec("multistep", settings.steps).schedule(self.sde).float()  # ends at 0
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.iteration, self.g_updates, self.elapsed = 0, 0, 0.0
        self.log: dict = {"g_loss": [], "fake_loss": [], "curve": []}

    # ------------------------------------------------------------------------------------------- the pieces
    def conditions(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(onehot, gamma) of ``n`` clips: unconditional rows get no label and gamma 0."""
        labels, gammas = draw_conditions(n, self.labels, self.settings.conditions(), self.gen)
        oh = onehot(labels.clamp_min(0), self.teacher.n_classes) * (labels >= 0).float()[:, None]
        return oh, gammas

    def generator_input(self, oh, gamma, k: int) -> torch.Tensor:
        """The input of G's step ``k`` by backward simulation: G's steps 0..k-1 from pure noise (no gradient)."""
        shape = (len(oh), 1, *self.input_hw)
        x = torch.randn(shape, generator=self.gen) * self.levels[0]
        with torch.no_grad():
            for j in range(k):
                d = self.generator(x, self.levels[j].expand(len(x)), oh, gamma)
                x = d + self.levels[j + 1] * torch.randn(shape, generator=self.gen)
        return x

    @torch.no_grad()
    def real_and_fake(self, x_t, sigma, oh, gamma) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided teacher's and the fake score's denoised estimates at ``x_t`` (one classifier pass serves
        both when they read taps)."""
        if self.teacher.uses_taps:
            taps = self.teacher.extractor(x_t, sigma, oh)
            real = apply_guidance(self.teacher.denoiser(x_t, sigma, _copy(taps)), taps.class_gradient, sigma, gamma,
                                  self.teacher.fade_sigma)
            return real, self.fake.denoiser(x_t, sigma, _copy(taps), (oh, gamma))
        return self.teacher(x_t, sigma, oh, gamma), self.fake(x_t, sigma, oh, gamma)

    def generator_loss(self, x0: torch.Tensor, oh, gamma) -> torch.Tensor:
        """DMD's loss on G's samples ``x0`` (with gradient): 0.5 ||x0 - sg(x0 - grad)||^2, grad the fake minus
        the real denoiser at x0 re-noised, normalised per sample by the real denoiser's mean error."""
        s = self.settings
        sigma = dmd_sigma(len(x0), self.sde, s.min_level, s.max_level, self.gen)
        x_t = perturb(x0.detach(), sigma, torch.randn(x0.shape, generator=self.gen))
        real, fake = self.real_and_fake(x_t, sigma, oh, gamma)
        norm = (x0.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
        grad = torch.nan_to_num((fake - real) / norm)
        return 0.5 * torch.nn.functional.mse_loss(x0, (x0 - grad).detach())

    def disc_logits(self, x0: torch.Tensor, oh: torch.Tensor) -> torch.Tensor:
        """The GAN head's logits at ``x0`` re-noised (DMD2's levels), with autograd through the frozen classifier
        to ``x0`` (so the generator's GAN loss reaches its weights)."""
        s = self.settings
        sigma = dmd_sigma(len(x0), self.sde, s.min_level, s.max_level, self.gen)
        x_t = perturb(x0, sigma, torch.randn(x0.shape, generator=self.gen))
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        fp = self.teacher.extractor.classifier.forward_with_tape(c_in * x_t, c_noise,
                                                                 keep_tape=False)
        return self.disc(fp.taps[-1], oh)

    def recognition_loss(self, x0: torch.Tensor, oh: torch.Tensor) -> torch.Tensor:
        """DMOSpeech's recognition loss: the frozen (training) classifier's cross-entropy for each labelled row's
        label at ``x0`` lightly re-noised, with autograd through the classifier to ``x0``; unlabelled rows add
        nothing. The evaluation classifier is never used here."""
        labelled = oh.sum(-1) > 0
        if not bool(labelled.any()):
            return x0.sum() * 0.0
        x0, oh = x0[labelled], oh[labelled]
        sigma = dmd_sigma(len(x0), self.sde, *RECOGNITION_LEVELS, self.gen)
        x_t = perturb(x0, sigma, torch.randn(x0.shape, generator=self.gen))
        _, _, c_in, c_noise = precondition(sigma, self.sde)
        logits = self.teacher.extractor.classifier.forward_with_tape(c_in * x_t, c_noise, keep_tape=False).logits
        return F.cross_entropy(logits, oh.argmax(-1))

    def disc_loss(self, x0_fake: torch.Tensor, oh: torch.Tensor) -> torch.Tensor:
        """Non-saturating GAN loss of the head: real training clips (with their labels) against the generator's."""
        idx = torch.randint(len(self.real_x), (len(x0_fake),), generator=self.gen)
        real_oh = onehot(self.real_labels[idx], self.teacher.n_classes)
        return (F.softplus(-self.disc_logits(self.real_x[idx], real_oh)).mean()
                + F.softplus(self.disc_logits(x0_fake.detach(), oh)).mean())

    def fake_loss(self, x0: torch.Tensor, oh, gamma) -> torch.Tensor:
        """Denoising score matching of the fake score on G's samples (EDM's weighting, conditioned like G)."""
        sigma = sample_training_sigma(len(x0), self.sde, self.gen)
        x_t = perturb(x0, sigma, torch.randn(x0.shape, generator=self.gen))
        err = (self.fake(x_t, sigma, oh, gamma) - x0) ** 2
        return (loss_weight(sigma, self.sde) * err.mean(dim=(1, 2, 3))).mean()

    # ----------------------------------------------------------------------------------------------- the loop
    @property
    def generator_moves(self) -> bool:
        """Whether this iteration updates G too (after the warm-up, every ``fake_updates``-th)."""
        s = self.settings
        return self.iteration >= s.warmup and (self.iteration - s.warmup) % s.fake_updates == 0

    def iteration_step(self) -> dict[str, float]:
        """One iteration: G's samples, a G update when due, then a fake-score update on the same samples."""
        t0 = time.monotonic()
        s = self.settings
        oh, gamma = self.conditions(s.batch_size)
        k = int(torch.randint(s.steps, (1,), generator=self.gen))
        x = self.generator_input(oh, gamma, k)
        sigma_k = self.levels[k].expand(len(x))
        out = {}
        net = self.generator.denoiser.net
        if self.generator_moves:
            net.train()
            x0 = self.generator(x, sigma_k, oh, gamma)
            loss = self.generator_loss(x0, oh, gamma)
            if self.disc is not None:
                self.disc.requires_grad_(False)
                loss = loss + s.gan_weight * F.softplus(-self.disc_logits(x0, oh)).mean()
                self.disc.requires_grad_(True)
            if s.recognition_weight > 0:
                loss = loss + s.recognition_weight * self.recognition_loss(x0, oh)
            out["g_loss"] = self._descend(loss, self.g_opt, net, "the generator")
            self.ema.update(net, self.g_updates)
            self.g_updates += 1
            x0 = x0.detach()
        else:
            with torch.no_grad():
                x0 = self.generator(x, sigma_k, oh, gamma)
        fake_net = self.fake.denoiser.net.train()
        out["fake_loss"] = self._descend(self.fake_loss(x0, oh, gamma), self.fake_opt, fake_net, "the fake score")
        if self.disc is not None:
            out["disc_loss"] = self._descend(self.disc_loss(x0, oh), self.disc_opt, self.disc, "the GAN head")
        self.iteration += 1
        self.elapsed += time.monotonic() - t0
        return out

    def _descend(self, loss: torch.Tensor, opt: torch.optim.Optimizer, net: torch.nn.Module, what: str) -> float:
        """One clipped optimiser step of ``net`` on ``loss``; its value."""
        if not torch.isfinite(loss):
            raise NotFinite(f"DMD: {what}'s loss became {float(loss)} at iteration {self.iteration}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def train(self, seconds: float, max_g_updates: int, state_path: Path | None,
              on_checkpoint: Callable[["DMDTrainer"], dict | None] | None = None, checkpoint_every: int = 100,
              progress: Callable[[dict], None] | None = None) -> None:
        """Iterate until ``seconds`` of training time (summed over resumes) or ``max_g_updates`` G updates; every
        ``checkpoint_every`` G updates (and at the end) ``on_checkpoint`` adds a point to the curve and the state
        is written."""
        if not self.log["curve"]:
            self.checkpoint(state_path, on_checkpoint)  # the starting point of the curve
        last = self.g_updates
        running: dict[str, float] = {}
        while self.elapsed < seconds and self.g_updates < max_g_updates:
            out = self.iteration_step()
            for key, v in out.items():
                running[key] = v if key not in running else 0.95 * running[key] + 0.05 * v
            if "g_loss" in out and self.g_updates % 10 == 0:
                self.log["g_loss"].append((self.g_updates, round(self.elapsed, 1), running["g_loss"]))
                self.log["fake_loss"].append((self.g_updates, round(self.elapsed, 1), running["fake_loss"]))
                if progress is not None:
                    progress({"iteration": self.iteration, "g_updates": self.g_updates,
                              "seconds": round(self.elapsed, 1), **{k: round(v, 5) for k, v in running.items()}})
            if self.g_updates - last >= checkpoint_every:
                self.checkpoint(state_path, on_checkpoint)
                last = self.g_updates
        self.checkpoint(state_path, on_checkpoint)

    def checkpoint(self, state_path: Path | None, on_checkpoint=None) -> None:
        if on_checkpoint is not None and not any(p["g_updates"] == self.g_updates for p in self.log["curve"]):
            point = on_checkpoint(self)
            if point:
                self.log["curve"].append({"g_updates": self.g_updates, "iteration": self.iteration,
                                          "seconds": round(self.elapsed, 1), **point})
        if state_path is not None:
            save_state(state_path, self.state())

    # ---------------------------------------------------------------------------------------------- state
    def state(self) -> dict:
        return {"generator": self.generator.denoiser.net.state_dict(), "generator_ema": self.ema.model.state_dict(),
                "fake": self.fake.denoiser.net.state_dict(), "g_opt": self.g_opt.state_dict(),
                "fake_opt": self.fake_opt.state_dict(), "rng": self.gen.get_state(), "iteration": self.iteration,
                "g_updates": self.g_updates, "elapsed": self.elapsed, "log": self.log,
                "settings": self.settings.record(),
                **({"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()} if self.disc else {})}

    def resume(self, path: Path) -> None:
        st = load_state(path)
        if st.get("settings") != self.settings.record():
            raise CheckpointError(f"{path} was written with other DMD settings ({st.get('settings')}); resume it with "
                                  "those or delete it to train afresh")
        try:
            self._load_networks(st, head_required=True)
            self.gen.set_state(st["rng"])
            self.iteration, self.g_updates = int(st["iteration"]), int(st["g_updates"])
            self.elapsed, self.log = float(st["elapsed"]), dict(st["log"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {e}); delete it to train "
                                  "afresh") from e

    def _load_networks(self, st: dict, head_required: bool) -> bool:
        """G, its EMA, the fake score and both optimisers from state ``st``, and the GAN head when this run has one
        (and ``st`` has one, unless ``head_required``); whether the head was loaded."""
        self.generator.denoiser.net.load_state_dict(st["generator"])
        self.ema.model.load_state_dict(st["generator_ema"])
        self.fake.denoiser.net.load_state_dict(st["fake"])
        self.g_opt.load_state_dict(st["g_opt"])
        self.fake_opt.load_state_dict(st["fake_opt"])
        head = self.disc is not None and (head_required or "disc" in st)
        if head:
            self.disc.load_state_dict(st["disc"])
            self.disc_opt.load_state_dict(st["disc_opt"])
        return head

    def start_from(self, path: Path) -> dict:
        """Start this run's networks and optimisers from another DMD run's state (written with other settings,
        e.g. before an extra term was added): G, its EMA, the fake score and both optimisers, and the GAN head
        when both runs have one. Counters, the curve and the random state start afresh. Returns what it started
        from, for the record."""
        st = load_state(path)
        try:
            head = self._load_networks(st, head_required=False)
            for opt, lr in ((self.g_opt, self.settings.generator_lr), (self.fake_opt, self.settings.fake_lr),
                            (self.disc_opt, self.settings.fake_lr)):
                for group in (opt.param_groups if opt is not None else ()):
                    group["lr"] = lr  # this run's learning rates, not the saved ones
            return {"dmd_state": str(path), "g_updates": int(st["g_updates"]), "iterations": int(st["iteration"]),
                    "seconds": round(float(st["elapsed"]), 1), "settings": st["settings"], "gan_head": head}
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path} cannot start this run ({type(e).__name__}: {e})") from e

    def ema_student(self) -> DistilledDenoiser:
        """G's EMA weights as a score model (what is shipped and judged)."""
        return build_score_model(self.generator.extractor, self.ema.model).eval()
