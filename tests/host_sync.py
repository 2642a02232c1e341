"""A dispatch mode that fails on anything a CUDA graph cannot capture: reading a tensor value on the host
(``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()`` all dispatch ``aten._local_scalar_dense``) and making
a tensor from host data (``torch.tensor(...)`` dispatches ``aten.lift_fresh``)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

FORBIDDEN = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default,
             torch.ops.aten.lift_fresh_copy.default}


class NoHostSync(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in FORBIDDEN:
            raise AssertionError(f"{func} inside the sampling loop: a host synchronisation or host data")
        return func(*args, **(kwargs or {}))
