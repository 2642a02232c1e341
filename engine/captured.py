"""A solver step over static buffers, captured once in a CUDA graph and replayed every step.

The step reads x, sigma, sigma_next and this step's noise from preallocated buffers and writes x back in
place, so one captured graph serves every step: before each replay only the small per-step values are
copied into their buffers. Capture happens only on CUDA (``torch.cuda.is_available()`` and a CUDA
device); elsewhere the very same step function runs eagerly over the same buffers, which is how its logic
is tested on CPU. Euler-Maruyama and predictor-corrector are supported; Heun's last step differs from the
others (no second evaluation at sigma = 0), so it is not captured.
"""
from __future__ import annotations

import torch

from .samplers import Noise, SamplerSpec, ScoreFn, euler_maruyama_step, langevin_step


def can_capture(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


class StaticStepSampler:
    def __init__(self, score_fn: ScoreFn, shape: tuple[int, ...], spec: SamplerSpec, device="cpu",
                 capture: bool | None = None):
        if spec.name not in ("euler_maruyama", "pc"):
            raise ValueError(f"sampler {spec.name!r} cannot run as a static step; use 'euler_maruyama' or 'pc'")
        self.score_fn, self.spec, self.device = score_fn, spec, torch.device(device)
        n_corr = spec.corrector_steps if spec.name == "pc" else 0
        self.x = torch.zeros(shape, device=self.device)
        self.z = torch.zeros(shape, device=self.device)
        self.zc = torch.zeros((n_corr, *shape), device=self.device)
        self.sigma = torch.zeros((), device=self.device)
        self.sigma_next = torch.zeros((), device=self.device)
        self.noise_scale = torch.zeros((), device=self.device)  # 0 on the final (denoising) step
        self.capture = can_capture(self.device) if capture is None else capture
        if self.capture and not can_capture(self.device):
            raise RuntimeError("CUDA-graph capture needs a CUDA device and torch.cuda.is_available()")
        self.graph = None

    def _step(self) -> None:
        x = self.x
        for j in range(self.zc.shape[0]):
            x = langevin_step(self.score_fn, x, self.sigma, self.zc[j], self.spec.snr)
        x = euler_maruyama_step(self.score_fn, x, self.sigma, self.sigma_next, self.z * self.noise_scale)
        self.x.copy_(x)

    def _capture(self) -> None:
        # Warm up on a side stream (lazy init, cuDNN autotune), then capture one step.
        saved = self.x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        self.x.copy_(saved)

    @torch.no_grad()
    def run(self, sigmas: torch.Tensor, noise: Noise) -> torch.Tensor:
        if len(sigmas) != self.spec.steps + 1:
            raise ValueError(f"schedule has {len(sigmas)} levels, expected {self.spec.steps + 1}")
        sig = sigmas.to(self.device)
        self.x.copy_(noise.prior * sig[0])
        for i in range(self.spec.steps):
            self.sigma.copy_(sig[i])
            self.sigma_next.copy_(sig[i + 1])
            self.z.copy_(noise.predictor[i])
            self.zc.copy_(noise.corrector[i])
            self.noise_scale.fill_(0.0 if i == self.spec.steps - 1 else 1.0)
            if self.capture and self.graph is None:
                self._capture()
            self.graph.replay() if self.graph is not None else self._step()
        return self.x.clone()
