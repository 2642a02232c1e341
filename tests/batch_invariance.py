"""Find the ops whose per-row result depends on the batch size: run a graph or module on a batch of N rows and on
its first n rows, and name the ops whose outputs differ in those rows although all of their inputs agree (the
roots; what follows them differs only because they do)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def onnx_batch_dependent_nodes(path: str | Path, feeds: dict[str, np.ndarray], sizes=(1, 3), threads: int = 1,
                               level: str = "all") -> list[tuple[int, str, str]]:
    """(n, node output, op type) of every root batch-dependent node of the ONNX graph at ``path`` in onnxruntime's
    CPU provider, for each batch size n in ``sizes`` against the batch of all rows of ``feeds``."""
    import onnx
    import onnxruntime as ort

    from engine.runtimes.ort import session_options

    model = onnx.load(str(path))
    node_of = {o: node for node in model.graph.node for o in node.output if o}
    declared = {o.name for o in model.graph.output}
    for name in node_of:
        if name not in declared:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), session_options(threads, level),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    full = dict(zip(names, sess.run(None, feeds)))
    rows = len(next(iter(feeds.values())))
    roots = []
    for n in sizes:
        part = dict(zip(names, sess.run(None, {k: v[:n] for k, v in feeds.items()})))
        differs = set()
        for name, node in node_of.items():  # graph order: a node's inputs come before it
            a, b = part.get(name), full.get(name)
            if a is None or a.ndim == 0 or a.shape[:1] != (n,) or b.shape[:1] != (rows,):
                continue
            if not np.array_equal(a, b[:n]):
                differs.add(name)
                if not any(i in differs for i in node.input):
                    roots.append((n, name, node.op_type))
    return roots


def torch_batch_dependent_modules(model: torch.nn.Module, args: tuple[torch.Tensor | None, ...], sizes=(1, 3)
                                  ) -> list[tuple[int, str]]:
    """(n, module name) of every module of ``model`` whose output rows differ between the batch of all rows of
    ``args`` and its first n rows, in the order they ran (the first of them is the root)."""
    records: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor):
                records.setdefault(name, []).append(output.detach().clone())
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        def run(n):
            records.clear()
            with torch.no_grad():
                model(*[a if a is None else a[:n] for a in args])
            return {k: list(v) for k, v in records.items()}

        rows = len(args[0])
        full = run(rows)
        found = []
        for n in sizes:
            part = run(n)
            for name, outs in part.items():
                if any(a.shape[:1] == (n,) and b.shape[:1] == (rows,) and not torch.equal(a, b[:n])
                       for a, b in zip(outs, full[name])):
                    found.append((n, name))
        return found
    finally:
        for h in handles:
            h.remove()
