"""Export of tapdiff's inference graphs: ONNX with parity checks, TensorRT compatibility and engine build.

- ``onnx_export.export_onnx``: artifact + manifest + parity check on onnxruntime (CPU provider here).
- ``graphs``: the engine's score model exported as it is (guided and unguided).
- ``trt_ops.check_onnx_for_tensorrt``: operators and opset against TensorRT's ONNX parser matrix (a copy ships
  in ``data/``, Apache-2.0, from onnx-tensorrt); every graph is checked before a TensorRT plan is built.
- ``artifacts``: the cache of exported graphs; ``tensorrt_names``: TensorRT's names per version.
- ``tensorrt_build``: optimisation profiles from a manifest, engine cache key, engine build (needs
  TensorRT and an NVIDIA GPU; never run on this project's machines). The runtimes that run the results are
  ``engine.runtimes``.
"""
