"""The public API: ``Engine`` loads a checkpoint bundle and generates log-Mels and waveforms."""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .audio.features import log_mel_range
from .audio.vocoders import make_vocoder
from .audio.wav import wav_bytes
from .backends import (DEFAULT_BACKEND, backend_can_be_captured, batch_invariant_by_construction, resolve_backend,
                       score_backend)
from .bundle import Bundle, default_model, load_bundle
from .deprecation import renamed_keyword
from .diffusion.captured import CapturedSampler, can_capture
from .diffusion.guidance import DEFAULT_GUIDANCE, conditioned
from .diffusion.noise import clip_seed, draw_noise
from .diffusion.score_model import score_model
from .diffusion.solvers import SamplerSpec, get_solver, sample
from .diffusion.taps import onehot
from .errors import BackendError, CheckpointError, InvalidInput, NotFinite
from .limits import Limits
from .progress import Progress
from .stages import stage
from .storage.atomic import write_files_or_none
from .storage.checkpoint import DEFAULT_CHECKPOINT, read_config

logger = logging.getLogger(__name__)


def clip_names(labels: Sequence[int | None]) -> list[str]:
    """``{digit}_{k}`` for the k-th clip of each digit of a request (``any_{k}`` for unconditional clips)."""
    names, counts = [], {}
    for lab in labels:
        key = "any" if lab is None else str(lab)
        counts[key] = counts.get(key, -1) + 1
        names.append(f"{key}_{counts[key]}")
    return names


@dataclass
class Generation:
    labels: list[int | None]  # requested digit per clip (None: unconditional)
    mels: torch.Tensor  # (N, n_mels, frames) natural-log Mel, de-normalised
    waves: torch.Tensor  # (N, frames * hop)
    sample_rate: int
    names: list[str] | None = None  # file stem per clip; default clip_names(labels)

    def __post_init__(self):
        if self.names is None:
            self.names = clip_names(self.labels)

    def save(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """Write one 16-bit WAV per clip, ``{prefix}{name}.wav``, all of them or none (a failure midway
        leaves ``out_dir`` as it was); returns the paths."""
        return write_files_or_none(out_dir, {f"{prefix}{name}.wav": wav_bytes(w.numpy(), self.sample_rate)
                                             for name, w in zip(self.names, self.waves)})


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Clip:
    """One clip to sample: its digit (None: unconditional), guidance strength, and where its noise comes
    from: clip ``index`` of a request with ``seed`` (``clip_seed(seed, index)``). Clips of different requests
    can share a batch; each still gets exactly its own noise."""

    label: int | None
    guidance: float
    seed: int
    index: int

    @property
    def guided(self) -> bool:
        return self.label is not None and self.guidance > 0


FADE_LIMIT = 1000.0  # the largest guidance fade, in units of sigma_max: beyond it guidance weighs < 1e-6 everywhere


class FadeNotBuilt(InvalidInput):
    """A request needs a guidance fade whose graphs this engine has not built (and was told not to build)."""


MAX_RUNNERS = 8  # static-buffer runners an Engine keeps (each holds its batch's buffers and, on CUDA, graphs)


class Engine:
    """Class-conditional speech generation with one frozen classifier as the backbone.

    >>> engine = Engine()                      # the shipped FSDD checkpoint
    >>> out = engine.generate(digit=[3, 7], n=2, seed=0)
    >>> out.save("out/")

    Clip k of a request is driven by its own generator seeded from (seed, k), so a clip does not depend on
    ``batch_size`` or on the other clips of its request.

    The engine logs through ``logging`` (loggers ``engine.*`` and ``export.*``, never print): a first export
    at info, a rebuilt cache at warning, sampling progress at info with ``progress=True``.
    """

    def __init__(self, checkpoint: str | Path | None = None, model: str | None = None, vocoder: str | None = None,
                 batch_size: int = 16, progress: bool = False, hifigan_dir: str | Path | None = None,
                 device: str = "cpu", backend: str = DEFAULT_BACKEND, artifacts: str | Path | None = None,
                 limits: Limits | None = None, batch_invariant: bool | None = None, fades: Sequence[float] = (),
                 capture: bool = True):
        """``model``: the score network (``engine.models.registry``); None: the checkpoint's default
        (``engine.bundle.default_model``: tapdiff, or its distilled student once that met the quality rule);
        ``backend``: which runtime evaluates the score (``engine.backends``: torch, onnxruntime, tensorrt, or
        auto: onnxruntime on a CPU where it is installed, else torch);
        ``artifacts``: the folder of exported graphs and engines (default ``$TAPDIFF_CACHE`` or
        ``~/.cache/tapdiff``), built there on first use;
        ``limits``: how much one request may ask for (``engine.limits.Limits``; its defaults unless given);
        ``progress``: log how far sampling is, at most every few seconds (``engine.progress``);
        ``batch_invariant``: a clip's bytes do not depend on what it was batched with: every evaluation runs the
        guided graph (unguided clips get gamma 0) and each clip is vocoded alone. On a backend that is
        batch-invariant by construction (``backends.batch_invariant_by_construction``: onnxruntime on a CPU) that
        is all it takes; elsewhere (eager torch) every evaluation is also padded to exactly ``batch_size`` rows
        with copies of the last clip, which costs a lone clip the full batch. None (the default): on where it
        costs no padding, off elsewhere;
        ``fades``: guidance fades whose denoisers are built at load, besides the checkpoint's (a service that must
        never export while it answers names the fades it allows here; at most ``limits.max_fades`` in all);
        ``capture``: False samples with the eager solver loop even where CUDA graphs would be captured (to time
        what capture gains, or to debug a step). Which fused kernels run is ``kernels.dispatch``'s switch
        (``TAPDIFF_KERNELS``)."""
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available to torch")
        if not _is_int(batch_size) or batch_size < 1:
            raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidInput(f"limits must be an engine.limits.Limits, got {type(limits).__name__}")
        self.limits = limits or Limits()
        if batch_size > self.limits.max_batch:
            raise InvalidInput(f"batch_size {batch_size} is above this engine's limit of {self.limits.max_batch} "
                               "(Limits.max_batch)")
        checkpoint = checkpoint or DEFAULT_CHECKPOINT
        if model is None:
            model = default_model(read_config(checkpoint))
        self.bundle: Bundle = load_bundle(checkpoint, model=model)
        self.model_name = model  # the registry name of the score network (engine.models.registry)
        self.torch_denoiser = score_model(self.bundle).to(self.device)
        self.batch_size, self.progress, self.backend = batch_size, progress, resolve_backend(backend, self.device)
        # what the solvers call: the score model itself, or an exported copy of it run by another runtime
        self.denoiser = score_backend(self.backend, self.torch_denoiser, self.bundle, self.device, artifacts,
                                      max_batch=batch_size)
        self._artifacts = artifacts
        free = batch_invariant_by_construction(self.backend, self.device)
        self.batch_invariant = free if batch_invariant is None else bool(batch_invariant)
        self.pads_batches = self.batch_invariant and not free  # the padding only where kernels need it
        self._denoisers = {self.torch_denoiser.fade_sigma: self.denoiser}  # per guidance fade (denoiser_for)
        self._denoisers_lock = threading.Lock()
        # static-buffer runners (CapturedSampler) per (spec, batch, guided): on CUDA for backends that run on the
        # capturing stream; elsewhere the eager loop (tests switch them on on CPU, where they step eagerly)
        self.static_runners = bool(capture) and can_capture(self.device) and backend_can_be_captured(self.backend)
        self._runners: dict = {}
        self._runners_lock = threading.Lock()
        # the checkpoint's measured choice (benchmarks/choose_sampling.py --write), checked on load
        sampling = self.bundle.sampling
        try:
            self.default_sampler = SamplerSpec(sampling["sampler"], sampling["steps"], sampling["rho"],
                                               tuple(sorted(sampling["options"].items())),
                                               float(sampling["guidance_fade_sigma"]))
        except ValueError as e:
            raise CheckpointError(f"{self.bundle.directory / 'config.json'}: its sampling section is invalid: {e}") from e
        if len(set(map(float, fades)) | {self.torch_denoiser.fade_sigma}) > self.limits.max_fades:
            raise InvalidInput(f"{len(fades)} fades asked to be built; this engine keeps at most {self.limits.max_fades} "
                               "(Limits.max_fades, the checkpoint's included)")
        for fade in fades:
            self.denoiser_for(self.sampler_spec(fade_sigma=float(fade)))
        self.vocoder_name = vocoder or sampling["vocoder"]
        self.vocoder = make_vocoder(self.vocoder_name, self.bundle.features, hifigan_dir)

    def __repr__(self) -> str:
        """What this engine runs: checkpoint (its folder's name), score model, backend (resolved), the default
        solver and its score evaluations per clip, batch size, and the device when it is not the CPU."""
        d = self.default_sampler
        device = "" if self.device.type == "cpu" else f", device={str(self.device)!r}"
        return (f"Engine(checkpoint={Path(self.bundle.directory).name!r}, model={self.model_name!r}, "
                f"backend={self.backend!r}, sampler={d.solver!r}, nfe={d.nfe}, batch_size={self.batch_size}{device})")

    @property
    def labels(self) -> tuple[int, ...]:
        return self.bundle.labels

    def sampler_spec(self, sampler: str | None = None, steps: int | None = None, nfe: int | None = None,
                     rho: float | None = None, options: dict | None = None, fade_sigma: float | None = None
                     ) -> SamplerSpec:
        """The run a request asks for, in full: the checkpoint's default solver, schedule and guidance fade
        unless overridden; ``nfe`` (score evaluations per clip) or ``steps``, not both. The default's options
        and rho carry over only when its solver is kept; its fade always does unless ``fade_sigma`` is given."""
        if steps is not None and nfe is not None:
            raise InvalidInput("give steps or nfe, not both")
        d = self.default_sampler
        name = sampler or d.solver
        get_solver(name)
        kept = name == d.solver
        rho = rho if rho is not None else (d.rho if kept else None)
        options = tuple(sorted(options.items())) if options is not None else (d.options if kept else ())
        fade_sigma = d.fade_sigma if fade_sigma is None else fade_sigma
        for what, value in (("nfe", nfe), ("steps", steps)):  # bounded before anything is sized by them
            if _is_int(value) and value > self.limits.max_nfe:
                raise InvalidInput(f"{what} {value} is above this engine's limit of {self.limits.max_nfe} score "
                                   "evaluations per clip (Limits.max_nfe)")
        if nfe is not None:
            spec = SamplerSpec.from_nfe(name, nfe, rho, options, fade_sigma)
        else:
            if steps is None:
                steps = d.steps if kept else get_solver(name).steps_for_nfe(d.nfe)
            spec = SamplerSpec(name, steps, rho, options, fade_sigma)
        return self.check_spec(spec)

    def check_spec(self, spec: SamplerSpec) -> SamplerSpec:
        """``spec`` with its fade filled in (the checkpoint's when None), if it is within this engine's limits."""
        if not isinstance(spec, SamplerSpec):
            raise InvalidInput(f"spec must be a SamplerSpec, got {type(spec).__name__}")
        if spec.nfe > self.limits.max_nfe:
            raise InvalidInput(f"{spec.label()} needs {spec.nfe} score evaluations per clip; this engine's limit is "
                               f"{self.limits.max_nfe} (Limits.max_nfe)")
        if spec.fade_sigma is None:
            spec = dataclasses.replace(spec, fade_sigma=self.default_sampler.fade_sigma)
        top = FADE_LIMIT * self.bundle.sde.sigma_max
        if spec.fade_sigma > top:
            raise InvalidInput(f"guidance fade {spec.fade_sigma:g} is above {top:g} ({FADE_LIMIT:g} x sigma_max), where "
                               "guidance would weigh under 1e-6 at every noise level; use guidance 0 instead")
        spec.schedule(self.bundle.sde)  # a schedule the arithmetic survives (rho), refused here if not
        return spec

    def warmup(self) -> list[float]:
        """Run one clip through every built guidance fade's denoiser and the vocoder (first-run allocations,
        sessions, the vocoder's tables), so a service's first request waits for none of it; returns the fades."""
        fades = self.built_fades()
        for fade in fades:
            spec = self.sampler_spec(steps=1, fade_sigma=fade)
            self.generate(self.labels[0], n=1, spec=spec)
        return fades

    def built_fades(self) -> list[float]:
        """The guidance fades this engine holds a built denoiser for, least recently used first."""
        with self._denoisers_lock:
            return list(self._denoisers)

    def denoiser_for(self, spec: SamplerSpec, build: bool = True):
        """What the solvers call for ``spec``: the engine's denoiser as its backend runs it, for the spec's guidance
        fade. A fade other than the loaded one gets its own denoiser (for an exported backend, graphs exported
        with that fade baked in, from the artifact cache), built outside the lock that sampling takes, and kept
        among the ``limits.max_fades`` most recently used (the loaded one always). ``build=False``: a fade not
        built yet is refused (``FadeNotBuilt``) instead, which is what a service does."""
        fade = float(self.default_sampler.fade_sigma if spec.fade_sigma is None else spec.fade_sigma)
        with self._denoisers_lock:
            if fade in self._denoisers:
                self._denoisers[fade] = self._denoisers.pop(fade)  # most recently used last
                return self._denoisers[fade]
        if not build:
            raise FadeNotBuilt(f"guidance fade {fade:g} has no built graph here; built: "
                               f"{', '.join(f'{f:g}' for f in self.built_fades())}")
        model = score_model(self.bundle, fade).to(self.device)
        built = score_backend(self.backend, model, self.bundle, self.device, self._artifacts,
                              max_batch=self.batch_size)
        with self._denoisers_lock:
            built = self._denoisers.setdefault(fade, built)
            loaded = self.torch_denoiser.fade_sigma
            while len(self._denoisers) > self.limits.max_fades:
                oldest = next(f for f in self._denoisers if f != loaded)
                del self._denoisers[oldest]
            return built

    def _check(self, labels, n, guidance, seed) -> None:
        for y in labels:
            if y is not None and (not _is_int(y) or y not in self.labels):
                raise InvalidInput(f"unknown digit {y!r}; this checkpoint generates {list(self.labels)}")
        if not _is_int(n) or n < 1:
            raise InvalidInput(f"n must be an integer >= 1, got {n!r}")
        if (not isinstance(guidance, numbers.Real) or isinstance(guidance, bool) or math.isnan(guidance)
                or guidance < 0 or math.isinf(guidance)):
            raise InvalidInput(f"guidance must be a finite number >= 0, got {guidance!r}")
        if guidance > self.limits.max_guidance:
            raise InvalidInput(f"guidance {guidance!r} is above this engine's limit of {self.limits.max_guidance:g} "
                               "(Limits.max_guidance)")
        if not _is_int(seed) or seed < 0:
            raise InvalidInput(f"seed must be an integer >= 0, got {seed!r}")
        if seed > self.limits.max_seed:
            raise InvalidInput(f"seed must be at most {self.limits.max_seed}, got {seed!r}")
        if n * len(labels) > self.limits.max_clips:
            raise InvalidInput(f"{n * len(labels)} clips asked for ({len(labels)} digit(s) x n={n}); this engine's "
                               f"limit is {self.limits.max_clips} per request (Limits.max_clips)")

    def conditioning(self, clips: Sequence[Clip]):
        """(onehot, gamma) of a batch of clips, or (None, None) when none of them is guided (and the engine is
        not batch-invariant, whose every evaluation is the guided one)."""
        if not any(c.guided for c in clips) and not self.batch_invariant:
            return None, None
        labels = torch.tensor([c.label if c.label is not None else 0 for c in clips], device=self.device)
        gamma = torch.tensor([float(c.guidance) if c.guided else 0.0 for c in clips], device=self.device)
        return onehot(labels, self.torch_denoiser.n_classes), gamma

    @torch.no_grad()
    def sample_clips(self, clips: Sequence[Clip], spec: SamplerSpec) -> torch.Tensor:
        """Normalised log-Mel samples (N, 1, n_mels, frames), one per clip, in batches of ``batch_size``."""
        feats, solver = self.bundle.features, get_solver(spec.solver)
        sigmas = spec.schedule(self.bundle.sde)
        options = dict(spec.options)
        out = []
        chunks = range(0, len(clips), self.batch_size)
        report = Progress(logger, "sampling", spec.steps * len(chunks), "steps", enabled=self.progress)
        for start in chunks:
            chunk = list(clips[start:start + self.batch_size])
            real = len(chunk)
            if self.pads_batches:  # one batch size for every evaluation: pad with copies of the last clip
                chunk += [chunk[-1]] * (self.batch_size - real)
            noise = draw_noise([clip_seed(c.seed, c.index) for c in chunk], (1, feats.n_mels, feats.frames),
                               spec.steps, solver.noise_per_step, self.device)
            if self.static_runners:
                # CUDA: one captured graph per step kind, replayed every step, by a runner kept per spec and batch
                x = self._run_static(chunk, spec, sigmas, noise, options, callback=lambda *_: report.advance())
            else:
                fn = conditioned(self.denoiser_for(spec), *self.conditioning(chunk))
                x = sample(fn, sigmas, noise, solver, options, callback=lambda *_: report.advance())
            out.append(x[:real].cpu())
        report.close()
        return torch.cat(out)

    def _run_static(self, chunk: list[Clip], spec: SamplerSpec, sigmas, noise, options, callback) -> torch.Tensor:
        """Sample ``chunk`` with the runner kept for (spec, batch, guided): built (and on CUDA captured) once, its
        conditioning in static buffers refilled for each chunk. One chunk at a time per runner (its buffers are
        its state); the capture itself is per thread (``CapturedSampler``), so other threads may allocate."""
        guided = any(c.guided for c in chunk) or self.batch_invariant
        key = (spec, len(chunk), guided)
        with self._runners_lock:
            entry = self._runners.pop(key, None)
            if entry is None:
                n = len(chunk)
                onehot_buf = torch.zeros(n, self.torch_denoiser.n_classes, device=self.device) if guided else None
                gamma_buf = torch.zeros(n, device=self.device) if guided else None
                runner = CapturedSampler(conditioned(self.denoiser_for(spec), onehot_buf, gamma_buf), spec.solver,
                                         noise.prior.shape, self.device, capture=can_capture(self.device))
                entry = (runner, onehot_buf, gamma_buf, threading.Lock())
            self._runners[key] = entry  # most recently used last
            while len(self._runners) > MAX_RUNNERS:
                self._runners.pop(next(iter(self._runners)))
        runner, onehot_buf, gamma_buf, lock = entry
        with lock:
            if guided:
                onehot_now, gamma_now = self.conditioning(chunk)
                onehot_buf.copy_(onehot_now)
                gamma_buf.copy_(gamma_now)
            return runner.run(sigmas, noise, options, callback=callback)

    @renamed_keyword("labels", "digit")
    def request_clips(self, digit, n: int, guidance: float, seed: int, first_clip: int = 0) -> list[Clip]:
        """The clips of a request (``n`` per digit of ``digit``: one, a list, or None for unconditional clips),
        validated."""
        if digit is None or _is_int(digit):
            digits = [digit]
        elif isinstance(digit, (list, tuple, range, np.ndarray)):
            digits = list(digit)
        else:
            raise InvalidInput(f"digit must be a digit, a list of digits or None, got {digit!r}")
        if not digits:
            raise InvalidInput("digit is an empty list: ask for at least one digit")
        self._check(digits, n, guidance, seed)
        flat = [y for y in digits for _ in range(n)]
        return [Clip(y, float(guidance), int(seed), first_clip + k) for k, y in enumerate(flat)]

    @renamed_keyword("labels", "digit")
    def generate(self, digit: int | Sequence[int] | None = None, n: int = 1, steps: int | None = None,
                 guidance: float = DEFAULT_GUIDANCE, seed: int = 0, sampler: str | None = None,
                 nfe: int | None = None, shard: tuple[int, int] | None = None,
                 spec: SamplerSpec | None = None) -> Generation:
        """``n`` clips per requested digit (``digit``: one, a list, or None for n unconditional clips, guidance
        ignored; ``labels=`` is its deprecated spelling).
        ``sampler``/``steps``/``nfe`` override the checkpoint's measured default solver and budget; ``spec`` (a
        ``SamplerSpec``: solver, steps, rho, options, guidance fade) gives the whole run instead.
        ``shard=(rank, world)``: only the clips whose index is ``rank`` modulo ``world``, named as in the
        whole request, so shards generated anywhere add up to the request's files.
        Safe to call from several threads at once: the engine holds no state that a call changes.
        Holds every clip of the request until it returns; ``generate_chunks`` hands them over a batch at a time."""
        parts = list(self.generate_chunks(digit, n, steps, guidance, seed, sampler, nfe, shard, spec))
        if not parts:
            return Generation([], torch.empty(0), torch.empty(0), self.bundle.features.sample_rate, [])
        return Generation([y for g in parts for y in g.labels], torch.cat([g.mels for g in parts]),
                          torch.cat([g.waves for g in parts]), parts[0].sample_rate, [m for g in parts for m in g.names])

    @renamed_keyword("labels", "digit")
    def generate_chunks(self, digit: int | Sequence[int] | None = None, n: int = 1, steps: int | None = None,
                        guidance: float = DEFAULT_GUIDANCE, seed: int = 0, sampler: str | None = None,
                        nfe: int | None = None, shard: tuple[int, int] | None = None,
                        spec: SamplerSpec | None = None) -> Iterator[Generation]:
        """``generate``'s clips, vocoded and handed over one sampler batch (``batch_size`` clips) at a time,
        so a request of any size holds at most one batch in memory. The request is validated in full before
        the first clip is sampled."""
        clips = self.request_clips(digit, n, guidance, seed)
        names = clip_names([c.label for c in clips])
        if shard is not None:
            rank, world = shard
            if not (_is_int(rank) and _is_int(world) and 0 <= rank < world):
                raise InvalidInput(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
            clips, names = clips[rank::world], names[rank::world]
        if spec is not None:
            if (sampler, steps, nfe) != (None, None, None):
                raise InvalidInput("give spec or sampler/steps/nfe, not both")
            spec = self.check_spec(spec)
        else:
            spec = self.sampler_spec(sampler, steps, nfe)
        return self._chunks(clips, names, spec)

    def _chunks(self, clips: list[Clip], names: list[str], spec: SamplerSpec) -> Iterator[Generation]:
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start:start + self.batch_size]
            out = self.finish([c.label for c in chunk], self.sample_clips(chunk, spec))
            out.names = names[start:start + self.batch_size]
            yield out

    def finish(self, labels: list[int | None], x: torch.Tensor) -> Generation:
        """Normalised samples -> de-normalised log-Mels (clamped to what audio can reach) -> waveforms."""
        mels = self.bundle.normaliser.denormalise(x[:, 0])
        if not torch.isfinite(mels).all():
            raise NotFinite("sampling produced NaN or inf; try more steps or lower guidance")
        mels = mels.clamp(*log_mel_range(self.bundle.features))
        step = 1 if self.batch_invariant else 16  # batch-invariant: each clip vocoded alone, as it would be alone
        with stage("vocoder"):
            waves = torch.cat([self.vocoder(mels[i:i + step]) for i in range(0, len(mels), step)])
        return Generation(labels, mels, waves, self.bundle.features.sample_rate)
