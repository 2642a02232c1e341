"""Export of tapdiff's inference graphs: ONNX with parity checks, and TensorRT compatibility checks.

- ``onnx_export.export_onnx``: artifact + manifest + parity check on onnxruntime (CPU provider here).
- ``taps_graph.TapsGraph``: the tap extractor (forward + explicit adjoint) as one exportable graph.
- ``trt_ops.check_onnx_for_tensorrt``: operators and opset against TensorRT's ONNX parser matrix.
The TensorRT engine build itself needs TensorRT and a GPU: not available on this project's machines.
"""
