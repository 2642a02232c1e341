"""Any registered solver over static buffers, each step kind captured once in a CUDA graph and replayed.

The runner holds x, the step's coefficient row, its noise draws and the solver's history as preallocated
buffers. Before each step only these small inputs are copied in; the step itself is the solver's own step
function (``engine.diffusion.solvers``), not a copy of it. Steps differ only in buffer contents, except the
step to sigma = 0 (Heun skips its correction there), so at most two graphs are captured: regular and
final. Capture happens only on CUDA (``can_capture``); elsewhere the very same step runs eagerly over the
same buffers, which is how its logic is tested on CPU.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..errors import BackendError, InvalidInput
from .solvers import Callback, Denoiser, Solver, check_noise, get_solver


def can_capture(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def capture_graph(fn: Callable[[], object], device: torch.device | str, warmup: int = 2,
                  before_capture: Callable[[], None] | None = None) -> tuple[torch.cuda.CUDAGraph, object]:
    """``fn`` captured in a CUDA graph on ``device``: (the graph, what ``fn`` returned while captured: its static
    outputs). ``fn`` first runs ``warmup`` times on a side stream (lazy initialisation, cuDNN autotune), then
    ``before_capture`` (e.g. put back buffers the warm-up changed), then once under capture; the capture is
    thread-local, so another thread's allocations meanwhile do not invalidate it."""
    device = torch.device(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = fn()
    return graph, out


class CapturedSampler:
    def __init__(self, model: Denoiser, solver: str | Solver, shape: tuple[int, ...], device="cpu",
                 capture: bool | None = None):
        self.model = model
        self.solver = get_solver(solver) if isinstance(solver, str) else solver
        self.device = torch.device(device)
        self.capture = can_capture(self.device) if capture is None else capture
        if self.capture and not can_capture(self.device):
            raise BackendError("CUDA-graph capture needs a CUDA device and torch.cuda.is_available()")
        self.x = torch.zeros(shape, device=self.device)
        self.denoised = torch.zeros(shape, device=self.device)
        self.coef = torch.zeros(self.solver.coefficient_width(), device=self.device)
        self.noise = torch.zeros((self.solver.noise_per_step, *shape), device=self.device)
        self.state = self.solver.init_state(self.x)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}

    def buffers(self) -> list[torch.Tensor]:
        """Every static buffer (their addresses must never change between steps or runs)."""
        return [self.x, self.denoised, self.coef, self.noise, *self.state.values()]

    def _step(self, final: bool) -> None:
        x_next, denoised = self.solver.step(self.model, self.x, self.coef, self.noise, self.state, final)
        self.x.copy_(x_next)
        self.denoised.copy_(denoised)

    def _capture(self, final: bool) -> None:
        # the warm-up steps change the buffers: they are put back before the step is captured
        saved = [b.clone() for b in self.buffers()]

        def restore() -> None:
            for b, s in zip(self.buffers(), saved):
                b.copy_(s)

        self.graphs[final], _ = capture_graph(lambda: self._step(final), self.device, before_capture=restore)

    @torch.no_grad()
    def run(self, sigmas: torch.Tensor, noise, options: Mapping[str, float] | None = None,
            callback: Callback | None = None) -> torch.Tensor:
        host = sigmas.tolist()
        steps = len(host) - 1
        check_noise(noise, self.solver, steps)
        if noise.prior.shape != self.x.shape:
            raise InvalidInput(f"noise for batch {tuple(noise.prior.shape)}, runner built for {tuple(self.x.shape)}")
        table = self.solver.table(sigmas, options, self.device)
        self.x.copy_(noise.prior * table[0, 0])
        for b in self.state.values():
            b.zero_()
        for i in range(steps):
            final = host[i + 1] == 0
            self.coef.copy_(table[i])
            self.noise.copy_(noise.steps[i])
            if self.capture:
                with torch.cuda.device(self.device):  # cuda:N: capture and replay on the buffers' GPU
                    if final not in self.graphs:
                        self._capture(final)
                    self.graphs[final].replay()
            else:
                self._step(final)
            if callback is not None:
                callback(i, host[i], self.denoised)
        return self.x.clone()
