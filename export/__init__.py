"""Export of the tap extractor and ScoreSubnet (ONNX, then TensorRT). Planned; see README "Status".

The classifier's backward is already an explicit adjoint (engine.classifier.NoiseConditionedClassifier
.adjoint), the form both ONNX exporters accept.
"""
