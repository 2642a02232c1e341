"""Export of tapdiff's inference graphs: ONNX with parity checks, TensorRT compatibility and engine build.

- ``onnx_export.export_onnx``: artifact + manifest + parity check on onnxruntime (CPU provider here).
- ``graphs``: the engine's score model exported as it is (guided and unguided), and the tap extractor
  alone (``TapsGraph``).
- ``trt_ops.check_onnx_for_tensorrt``: operators and opset against TensorRT's ONNX parser matrix.
- ``tensorrt_build``: optimisation profiles from a manifest, engine cache key, engine build (needs
  TensorRT and an NVIDIA GPU; never run on this project's machines).
"""
