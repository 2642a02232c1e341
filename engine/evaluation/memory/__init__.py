"""Memory of one score evaluation as two figures that mean the same thing on every backend, one module per job:

- ``graph_plan``: **planned** for an exported ONNX graph (what onnxruntime and TensorRT are given): the peak of
  live activation bytes by a liveness rule over the graph's nodes, machine-independent;
- ``live_tensors``: **planned** for eager torch: torch's own allocator accounting of one evaluation, and the
  tensors alive at its peak;
- ``process_probe``: **measured**, the project's one process-memory probe: the peak of a fresh process's resident
  set (on a GPU: device memory in use) over its state just before the first evaluation;
- ``report``: whether the two agree within a stated margin, the markdown table, and the command
  ``python -m engine.evaluation.memory --checkpoint CKPT --out DIR`` (``memory.md`` and ``memory.json``).
"""

MIB = 2 ** 20
