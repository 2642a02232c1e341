"""Planned memory of an eager torch evaluation: torch's own accounting.

``allocator_peak`` reads every CPU (or CUDA) allocation and free that c10's allocator reports to the profiler
(``profile_memory=True``, its allocation events with the allocator's running total), so kernel-internal
temporaries (im2col buffers, attention scratch) are in it; this is exact for what goes through c10's allocator
and excludes what a library mallocs on its own (oneDNN's or MKL's private scratch). ``LiveTensors``, a
``TorchDispatchMode`` that counts the storage of every op output from the op that makes it until its last tensor
is garbage-collected, gives the part held as tensors and where the peak sits (the op, and the tensors alive there).
"""
from __future__ import annotations

import gc
import weakref
from typing import Callable

import torch

from . import MIB


class LiveTensors:
    """Live bytes of the storages that op outputs own, from the op that makes one until its last tensor is
    garbage-collected, under a ``TorchDispatchMode``; the peak, the op at it and the tensors alive there.
    A view's storage is its base's: it adds no bytes, and keeps the base's storage alive. Storages that
    existed before (weights, inputs) are never counted."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live: dict[int, list] = {}  # data_ptr -> [bytes, refs, op, shape]
        self.current = self.peak = self.n_storages = 0
        self.peak_op, self.alive_at_peak = "", []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(str(func.overloadpacket.__name__), tree_flatten((args, kwargs))[0], tree_flatten(out)[0])
                return out

        self._mode = _Mode()

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[key]

    def _record(self, op: str, inputs: list, outputs: list) -> None:
        seen_in = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        grew = False
        for t in outputs:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.live:  # a view of (or the same tensor as) a counted storage: one more holder
                self.live[key][1] += 1
            elif key in seen_in or storage.nbytes() == 0:  # a view of a storage made before: not counted
                continue
            else:
                self.live[key] = [storage.nbytes(), 1, op, tuple(t.shape)]
                self.current += storage.nbytes()
                self.n_storages += 1
                grew = True
            weakref.finalize(t, self._release, key)
        if grew and self.current > self.peak:
            self.peak, self.peak_op = self.current, op
            self.alive_at_peak = [(b, o, s) for b, _, o, s in self.live.values()]

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def top(self, n: int = 8) -> list[dict]:
        return [{"op": o, "bytes": b, "shape": list(s)} for b, o, s in sorted(self.alive_at_peak, key=lambda e: -e[0])[:n]]


def allocator_peak(fn: Callable[[], object], device: str = "cpu") -> dict:
    """Peak of bytes allocated through c10's allocator on ``device`` while ``fn`` runs, over what was
    allocated when it started. On CUDA: the caching allocator's own peak statistic (``max_memory_allocated``;
    exact, and safe around CUDA graph replays, which the profiler is not); elsewhere: the profiler's allocation
    events (``profile_memory=True``)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "end_bytes": torch.cuda.memory_allocated(device) - base, "events": None}
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == torch.device(device).type:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return {"peak_bytes": peak, "end_bytes": cur, "events": len(events)}


@torch.no_grad()
def planned_torch(bundle, batch: int, guidance: float, model=None, device: str = "cpu") -> dict:
    """Eager torch's figure of one score evaluation (after one warm-up evaluation): the allocator's live-bytes
    peak (``allocator_peak``; on CUDA torch's ``max_memory_allocated``), and the op-output part of it with
    where its peak sits (``LiveTensors``)."""
    from ...diffusion.score_model import score_model
    from ..cost import score_eval

    model = model or score_model(bundle).to(device)
    fn, x, s = score_eval(bundle, batch, guidance, model, device)
    fn(x, s)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(x, s)
        alloc = {"peak_bytes": torch.cuda.max_memory_allocated() - before, "source": "torch.cuda.max_memory_allocated"}
    else:
        alloc = {**allocator_peak(lambda: fn(x, s)), "source": "profiler allocation events (c10 CPU allocator)"}
    live = LiveTensors()
    with live:
        out = fn(x, s)
        del out
    return {"peak_bytes": alloc["peak_bytes"], "peak_mib": alloc["peak_bytes"] / MIB, "source": alloc["source"],
            "tensors_peak_bytes": live.peak, "tensors_peak_mib": live.peak / MIB, "tensors_peak_op": live.peak_op,
            "tensors_alive_at_peak": live.top(), "n_storages": live.n_storages,
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
