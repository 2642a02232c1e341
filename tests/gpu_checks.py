"""The checks the GPU tests (``tests/gpu/``) make, as functions, so that their logic is proven on CPU too
(``tests/test_gpu_kit.py``): a check that cannot fail there would prove nothing on a GPU.

- ``captured_vs_eager``: one static-buffer runner (``CapturedSampler``), run twice with new noise and new
  conditioning, against the eager loop each time; on CPU the runner steps eagerly over its static buffers.
- ``kernel_check``: a kernel against its float64 reference, eagerly and captured in a graph replayed on NEW inputs
  (``cuda_graph_capture`` on a GPU; ``eager_capture`` stands in for it on CPU and under the Triton interpreter).
- ``judge_ort_refusal``: whether an onnxruntime-on-CUDA failure is a refusal that names the missing provider.

Each returns a ``Check``: the problems (none: it passed), one line of detail (what was compared, the errors, the
tolerance and why) and the numbers. Tolerances: ``tests/tolerances.py``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pytest
import torch

from tolerances import APART_FACTOR, CAPTURED_TOL, CAPTURED_WHY, captured_scale, kernel_tolerances, rel_error

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): tests/gpu runs only on a GPU machine"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DIGITS = (3, 7)  # the clips the Engine tests generate


@dataclass
class Check:
    problems: list[str]
    detail: str
    numbers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def timeout_marks(seconds: float) -> list:
    """``pytest.mark.timeout(seconds)`` where pytest-timeout is installed, nothing elsewhere (not a dependency)."""
    return [pytest.mark.timeout(seconds)] if importlib.util.find_spec("pytest_timeout") else []


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for cuBLAS matmuls and cuDNN convolutions on or off inside the block (fp32 comparisons: off)."""
    m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = m, c


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(out: torch.Tensor, ref: torch.Tensor, tol: float, scale: float | None = None) -> dict:
    """``tolerances.rel_error`` with its parts, judged against ``tol`` (``ok``)."""
    r = ref.detach().double().cpu()
    if scale is None:
        finite = r[torch.isfinite(r)]
        scale = float(finite.abs().max()) if finite.numel() else 1.0
    rel = rel_error(out, ref, scale)
    return {"ok": bool(rel <= tol), "max_abs": rel * max(scale, 1e-30), "rel": rel, "scale": scale, "tol": tol}


def fmt(c: dict) -> str:
    return f"max abs {c['max_abs']:.3g}, rel {c['rel']:.3g} (scale {c['scale']:.3g}) vs tol {c['tol']:.3g}"


# --------------------------------------------------------------------------------------------------------------
# Captured sampler vs eager
# --------------------------------------------------------------------------------------------------------------
CAPTURED_RUNS = ((0, (3, 7, 5, 1), (3.0, 1.5, 2.0, 4.0)), (1, (5, 1, 8, 0), (2.0, 4.0, 0.5, 3.0)))


def captured_vs_eager(model, n_classes: int, solver: str, sigmas: torch.Tensor, runs: Sequence[tuple], device,
                      tol: float = CAPTURED_TOL, shape: tuple[int, ...] = (1, 80, 72), options: dict | None = None,
                      make_runner=None, require_capture: bool | None = None) -> Check:
    """One runner, successive ``runs`` of (seed, labels, gammas), each against the eager loop on the same inputs.

    The conditioning lives in static buffers the runner's denoiser reads (``conditioned(model, onehot_buf,
    gamma_buf)``), refilled before each run as the noise is, so a replay that kept the first run's inputs returns
    the first run's output and fails the second comparison. The check also fails when the runs' references are
    too close to tell such a replay apart, or when capture was required (CUDA) but nothing was captured."""
    from engine.diffusion.captured import CapturedSampler, can_capture
    from engine.diffusion.guidance import conditioned
    from engine.diffusion.noise import clip_seed, draw_noise
    from engine.diffusion.solvers import get_solver, sample
    from engine.diffusion.taps import onehot

    dev = torch.device(device)
    spec = get_solver(solver)
    steps, batch = len(sigmas) - 1, len(runs[0][1])
    onehot_buf = torch.zeros(batch, n_classes, device=dev)
    gamma_buf = torch.zeros(batch, device=dev)
    runner = (make_runner or CapturedSampler)(conditioned(model, onehot_buf, gamma_buf), spec, (batch, *shape), dev)
    if require_capture is None:
        require_capture = can_capture(dev)
    per_run, refs = [], []
    for seed, labels, gammas in runs:
        noise = draw_noise([clip_seed(seed, k) for k in range(batch)], shape, steps, spec.noise_per_step, dev)
        oh = onehot(torch.tensor(labels, device=dev), n_classes)
        g = torch.tensor(gammas, dtype=torch.float32, device=dev)
        onehot_buf.copy_(oh)
        gamma_buf.copy_(g)
        got = runner.run(sigmas, noise, options)
        with torch.no_grad():
            ref = sample(conditioned(model, oh, g), sigmas, noise, spec, options)
        c = compare(got, ref, tol, captured_scale(ref))
        c["bitwise_equal"] = bool(torch.equal(got, ref))
        per_run.append(c)
        refs.append(ref)
    apart = compare(refs[1], refs[0], math.inf, captured_scale(refs[0]))["rel"]
    graphs = len(getattr(runner, "graphs", {}) or {})
    captured = bool(getattr(runner, "capture", False))
    problems = [f"run {i + 1}: {fmt(c)}" for i, c in enumerate(per_run) if not c["ok"]]
    if not apart > APART_FACTOR * tol:
        problems.append(f"the two runs' eager outputs differ by only {apart:.3g}: a stale replay would pass")
    if require_capture and (not captured or graphs == 0):
        problems.append(f"capture was required but the runner captured {graphs} graphs (capture={captured})")
    where = (f"{graphs} CUDA graph(s) replayed" if captured
             else "no capture here: the same steps run eagerly over the static buffers")
    detail = (f"{spec.name}, {steps} steps, batch {batch}, {len(runs)} runs of one runner with new noise and "
              f"conditioning ({where}): " + "; ".join(
                  f"run {i + 1} {fmt(c)}{' (bitwise equal)' if c['bitwise_equal'] else ''}"
                  for i, c in enumerate(per_run)) + f"; runs differ by {apart:.3g} [{CAPTURED_WHY}]")
    if problems:
        detail = "FAILED: " + "; ".join(problems) + " -- " + detail
    return Check(problems, detail, {"runs": per_run, "between_runs_rel": apart, "graphs": graphs,
                                    "captured": captured, "steps": steps, "batch": batch})


# --------------------------------------------------------------------------------------------------------------
# Kernels vs references, eagerly and replayed in a graph on new inputs
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCase:
    kernel: str  # key of kernels.dispatch.SUPPORTED_DTYPES and of tolerances.kernel_tolerances
    label: str
    make: Callable  # (generator, dtype, device) -> dict of base input buffers (views are taken by args)
    args: Callable  # buffers -> the call's positional arguments
    fast: Callable  # the public dispatcher
    ref: Callable  # the reference

    @property
    def id(self) -> str:
        return f"{self.kernel} {self.label}"


def _randn(gen, shape, dtype, device, std=1.0):
    return (torch.randn(shape, generator=gen) * std).to(device=device, dtype=dtype)


def kernel_cases() -> list[KernelCase]:
    """Each kernel at the shapes the engine runs (shipped checkpoint, batch 2), both tap-norm launch plans."""
    from kernels import (silu_affine_adjoint, silu_affine_adjoint_reference, tap_attention, tap_attention_reference,
                         tap_pair_norm, tap_pair_norm_reference, tap_rms_norm, tap_rms_norm_reference)

    def pair(C, H, W):
        return lambda gen, dt, dev: {"f": _randn(gen, (2, C, H, W), dt, dev, 3.0),
                                     "g": _randn(gen, (2, C, H, W), dt, dev, 1e-3)}

    def attention(C, H, W):
        return lambda gen, dt, dev: {"q": _randn(gen, (2, C, H, W), dt, dev),
                                     "kv": _randn(gen, (2, 2 * C, H, W), dt, dev),
                                     "pos": _randn(gen, (1, C, H, W), dt, dev, 0.5)}

    def att_args(b):
        k, v = b["kv"].chunk(2, dim=1)  # channel-slice views, as TapAttention makes them
        return b["q"], k, v, b["pos"], 4

    def adjoint(C, H, W, full):
        def make(gen, dt, dev):
            b = {"x": _randn(gen, (2, 2, C, H, W), dt, dev), "t": _randn(gen, (2, C, H, W), dt, dev, 3.0)}
            if full:
                b.update(w=_randn(gen, (C,), dt, dev), film=_randn(gen, (2, 2 * C, 1, 1), dt, dev, 0.3),
                         r=_randn(gen, (2, 2, C, H, W), dt, dev))
            return b
        return make

    return [
        KernelCase("tap_pair_norm", "2x(32+32)x80x72 (two launches)", pair(32, 80, 72), lambda b: (b["f"], b["g"]),
                   tap_pair_norm, tap_pair_norm_reference),
        KernelCase("tap_pair_norm", "2x(192+192)x10x9 (one launch)", pair(192, 10, 9), lambda b: (b["f"], b["g"]),
                   tap_pair_norm, tap_pair_norm_reference),
        KernelCase("tap_rms_norm", "2x1x80x72", lambda gen, dt, dev: {"x": _randn(gen, (2, 1, 80, 72), dt, dev, 1e-2)},
                   lambda b: (b["x"],), tap_rms_norm, tap_rms_norm_reference),
        KernelCase("tap_attention", "2x64x20x18, 4 heads (dh 16, N 360)", attention(64, 20, 18), att_args,
                   tap_attention, tap_attention_reference),
        KernelCase("tap_attention", "2x96x10x9, 4 heads (dh 24, N 90)", attention(96, 10, 9), att_args,
                   tap_attention, tap_attention_reference),
        KernelCase("silu_affine_adjoint", "S=2, 2x96x20x18, weight + FiLM scale view + residual",
                   adjoint(96, 20, 18, True), lambda b: (b["x"], b["t"], b["w"], b["film"].chunk(2, dim=1)[0], b["r"]),
                   silu_affine_adjoint, silu_affine_adjoint_reference),
        KernelCase("silu_affine_adjoint", "S=2, 2x48x40x36, no weight/scale/residual", adjoint(48, 40, 36, False),
                   lambda b: (b["x"], b["t"], None), silu_affine_adjoint, silu_affine_adjoint_reference),
    ]


def _tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _double(a):
    return a.double() if isinstance(a, torch.Tensor) else a


def cuda_graph_capture(fn: Callable[[], tuple]):
    """Capture ``fn`` (already run once, so compiled) in a CUDA graph: (replay, the graph's static outputs)."""
    from engine.diffusion.captured import capture_graph

    sync()
    graph, out = capture_graph(fn, torch.cuda.current_device(), warmup=1, before_capture=sync)
    return graph.replay, out


def eager_capture(fn: Callable[[], tuple]):
    """The CPU stand-in for ``cuda_graph_capture``: a "replay" reruns ``fn`` into the same static outputs."""
    out = fn()
    return (lambda: [o.copy_(n) for o, n in zip(out, fn())]), out


def kernel_check(case: KernelCase, dtype, device="cuda", capture=None, require_triton: bool = True,
                 fast: Callable | None = None) -> Check:
    """``case``'s dispatcher (or ``fast``) against its reference in float64, eagerly and as a captured graph:
    replayed on the captured inputs, then on NEW inputs copied into the same buffers (it must follow them)."""
    from kernels import backend_for

    fast = fast or case.fast
    bufs = case.make(torch.Generator().manual_seed(0), dtype, device)
    call = lambda: _tuple(fast(*case.args(bufs)))  # noqa: E731  (reads the buffers at every call)
    backend = backend_for(case.args(bufs)[0], case.kernel)
    problems = []
    if require_triton and backend != "triton":
        problems.append(f"dispatch chose {backend!r}, not 'triton'")

    def judge(outs, what):
        args = tuple(_double(a) for a in case.args(bufs))
        refs = _tuple(case.ref(*args))
        res = []
        for i, (t, o, r) in enumerate(zip(kernel_tolerances(case.kernel, args, refs, dtype), outs, refs)):
            c = compare(o, r, t.tol, t.scale)
            c.update(output=i, why=t.why, dtype_ok=o.dtype == dtype)
            if not c["ok"] or not c["dtype_ok"]:
                problems.append(f"{what} output {i}: {fmt(c)}" + ("" if c["dtype_ok"] else f", dtype {o.dtype}"))
            res.append(c)
        return res

    eager = [t.clone() for t in call()]
    numbers = {"backend": backend, "eager": judge(eager, "eager")}
    replay, static = (capture or cuda_graph_capture)(call)
    replay()
    sync()
    same = [compare(s, e, c["tol"], c["scale"]) for s, e, c in zip(static, eager, numbers["eager"])]
    numbers["replay_same_inputs"] = same
    problems += [f"replay on the captured inputs, output {i}: {fmt(c)} from eager" for i, c in enumerate(same)
                 if not c["ok"]]
    new = case.make(torch.Generator().manual_seed(1), dtype, device)
    for k, buf in bufs.items():  # other values, twice as large: every output must move, a bf16 log-RMS included
        buf.copy_(2 * new[k])
    replay()
    sync()
    numbers["replay_new_inputs"] = judge(static, "replay on new inputs")
    # how far the replay moved from the old result, on the tolerance's scale: a stale replay moves 0, and the new
    # inputs (twice as large: the log-RMS shifts by ln 2) move every output by many tolerances
    moved = [compare(s, e, math.inf, c["scale"])["rel"] for s, e, c in zip(static, eager, numbers["replay_new_inputs"])]
    numbers["replay_moved_rel"] = moved
    for i, (m, c) in enumerate(zip(moved, numbers["replay_new_inputs"])):
        if not m > 3 * c["tol"]:
            problems.append(f"replay output {i} did not follow the new inputs (moved {m:.3g} from the old result)")
    e0, r0 = numbers["eager"][0], numbers["replay_new_inputs"][0]
    detail = (f"{backend} vs float64 reference: eager {fmt(e0)}; graph replayed on new inputs {fmt(r0)}"
              + (f"; log-RMS eager {fmt(numbers['eager'][1])}" if len(numbers["eager"]) > 1 else "")
              + f" [{e0['why']}]")
    if problems:
        detail = "FAILED: " + "; ".join(problems) + " -- " + detail
    return Check(problems, detail, numbers)


# --------------------------------------------------------------------------------------------------------------
# onnxruntime on CUDA
# --------------------------------------------------------------------------------------------------------------
CUDA_PROVIDER_NAMES = ("CUDAExecutionProvider", "onnxruntime-gpu", "CUDA provider")


def judge_ort_refusal(e: BaseException) -> Check:
    """A refusal passes when it is a BackendError / ImportError whose message names the missing CUDA provider."""
    from engine.errors import BackendError

    text = f"{type(e).__name__}: {e}"
    if isinstance(e, (BackendError, ImportError)) and any(s in str(e) for s in CUDA_PROVIDER_NAMES):
        return Check([], f"refused by name: {text}")
    return Check([f"neither worked nor refused by naming the CUDA provider: {text}"],
                 f"neither worked nor refused by naming the CUDA provider: {text}")
