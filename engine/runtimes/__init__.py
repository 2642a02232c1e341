"""The runtimes that evaluate an exported score graph behind the engine's denoiser interface
``denoiser(x, sigma[, onehot, gamma]) -> denoised``: onnxruntime (``ort``) and TensorRT (``trt``).
``engine.backends`` chooses among them and eager torch; ``export/`` builds what they run."""
