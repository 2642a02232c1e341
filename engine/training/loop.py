"""Shared training harness: EMA weights, a wall-clock budget, and resumable state written atomically."""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import InvalidInput, NotFinite
from ..progress import Progress
from ..storage.checkpoint import CheckpointError
from ..storage.config import TrainConfig
from ..storage.state_file import legacy_state_error, load_state, save_state

logger = logging.getLogger(__name__)


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early EMA follows the model closely
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)


def _dist():
    """(rank, world) of the torch.distributed group, (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _global_max(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _global_mean(value: float, world: int) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


def parameter_groups(model: torch.nn.Module, lr_scales: dict[str, float]) -> list[dict]:
    """The optimiser's groups: one per prefix of ``lr_scales`` that names parameters (a prefix naming none is an
    error), then the rest at scale 1; each group records its ``lr_scale``."""
    named = list(model.named_parameters())
    groups, taken = [], set()
    for prefix, scale in lr_scales.items():
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise InvalidInput(f"learning-rate scale of {prefix!r} must be a number > 0, got {scale!r}")
        params = [p for n, p in named if n.startswith(prefix) and n not in taken]
        if not params:
            raise InvalidInput(f"no parameter of {type(model).__name__} is named {prefix!r}...")
        taken |= {n for n, _ in named if n.startswith(prefix)}
        groups.append({"params": params, "lr_scale": float(scale)})
    groups.append({"params": [p for n, p in named if n not in taken], "lr_scale": 1.0})
    return groups


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    cfg: TrainConfig,
    state_path: Path | None,
    desc: str,
    on_checkpoint: Callable[[EMA, int, float], dict | None] | None = None,
    checkpoint_every_s: float = 120.0,
    progress: bool = True,
    start: dict | None = None,
    stretch: dict | None = None,
    lr_scales: dict[str, float] | None = None,
) -> tuple[EMA, dict]:
    """Minimise ``loss_fn`` until ``cfg.seconds`` of training time (summed over resumes) or ``cfg.max_steps``.

    Resumes from ``state_path`` (a ``engine.storage.state_file`` file: tensors and JSON, never a pickle) when it
    exists. Without state, ``start`` ({"step", "elapsed", "log"}) continues
    a network the caller has already loaded (a shipped checkpoint: weights and EMA from it, a fresh optimiser
    with its own learning-rate warm-up); steps and seconds count on from it and its point is saved first. ``on_checkpoint(ema, step, elapsed)`` runs at each save;
    the metrics it returns are appended to the learning curve ``log['curve']``, which is saved with the state.
    Every call (the first and each resume) appends ``stretch`` (what the caller records about itself, e.g. its
    command) with the step, seconds and threads it starts from to ``log['stretches']``, so a run resumed
    several times keeps the record of each stretch. ``lr_scales`` ({parameter-name prefix: factor}) trains the
    parameters under each prefix at that multiple of ``cfg.lr`` (warm-up included); the rest at ``cfg.lr``.

    Under torch.distributed (torchrun; the caller wraps the network in DistributedDataParallel so gradients
    are averaged) every rank draws its own batches from its own generator, all ranks stop at the same step
    (the budget is the slowest rank's training time), the logged loss is the mean over ranks, and rank 0
    alone writes the state, which holds every rank's generator so a resume is exact.
    """
    rank, world = _dist()
    opt = torch.optim.AdamW(parameter_groups(model, lr_scales or {}), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)
    step, elapsed, log = 0, 0.0, {"losses": [], "curve": []}
    saved_step = None  # the step the state on disk holds
    if state_path is not None and (legacy := legacy_state_error(Path(state_path))) is not None:
        raise legacy
    if state_path is not None and state_path.exists():
        st = load_state(state_path)
        if st.get("world", 1) != world:
            raise InvalidInput(f"{state_path} was saved by {st.get('world', 1)} process(es); resume it with as many "
                               f"(this run has {world})")
        try:
            model.load_state_dict(st["model"])
            ema.model.load_state_dict(st["ema"])
            opt.load_state_dict(st["opt"])
            gen.set_state(st["rng"][rank] if isinstance(st["rng"], list) else st["rng"])
            step, elapsed, log = int(st["step"]), float(st["elapsed"]), dict(st["log"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{state_path} does not fit this run ({type(e).__name__}: {e}); delete it to "
                                  "train afresh") from e
        saved_step = step
    elif start is not None:
        step, elapsed = int(start["step"]), float(start["elapsed"])
        log = {"losses": [], "curve": [], **start.get("log", {}), "warm_start": step}
    log["stretches"] = [*log.get("stretches", []), {**(stretch or {}), "from_step": step,
                                                    "from_seconds": round(elapsed, 1),
                                                    "threads": torch.get_num_threads(), "processes": world}]

    def save() -> None:
        nonlocal saved_step
        saved_step = step
        rngs = [gen.get_state()]
        if world > 1:
            import torch.distributed as dist

            rngs = [None] * world
            dist.all_gather_object(rngs, gen.get_state())
        if rank != 0:
            return
        if on_checkpoint is not None:
            metrics = on_checkpoint(ema, step, elapsed)
            if metrics:
                log["curve"].append({"step": step, "seconds": round(elapsed, 1), **metrics})
        if state_path is not None:
            save_state(
                state_path, {"model": model.state_dict(), "ema": ema.model.state_dict(), "opt": opt.state_dict(),
                 "rng": rngs if world > 1 else rngs[0], "world": world, "step": step, "elapsed": elapsed,
                 "log": log})

    if start is not None and not (state_path is not None and state_path.exists()):
        save()  # the starting point of the curve
    model.train()
    report = Progress(logger, desc, int(cfg.seconds), "s trained", int(elapsed), enabled=progress and rank == 0)
    last_save, running = elapsed, None
    while elapsed < cfg.seconds and step < cfg.max_steps:
        t0 = time.monotonic()
        warm = min(1.0, (step - log.get("warm_start", 0) + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warm * g.get("lr_scale", 1.0)  # states saved before lr_scale: 1
        loss = loss_fn(gen)
        if not torch.isfinite(loss):
            raise NotFinite(f"{desc}: loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        dt = time.monotonic() - t0
        elapsed += dt
        value = float(loss.detach())
        if world > 1:  # one budget and one loss curve for the whole group
            elapsed, value = _global_max(elapsed), _global_mean(value, world)
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0:
            log["losses"].append((step, elapsed, running))
        report.advance_to(int(elapsed), f"step {step}, loss {running:.4f}")
        if elapsed - last_save > checkpoint_every_s:  # training seconds: the same decision on every rank
            save()
            last_save = elapsed
    if saved_step != step:  # a rerun of a finished run adds no second curve point for the same weights
        save()
    report.close(f"step {step}, loss {running:.4f}" if running is not None else f"step {step}")
    log["steps"], log["seconds"] = step, elapsed
    return ema, log
