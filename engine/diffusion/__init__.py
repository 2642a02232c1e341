"""Diffusion: the VE SDE and its EDM preconditioning, the denoiser wrapper, the tap extractor, guidance,
the score-model factory, per-clip noise, the solvers and the static-buffer (CUDA-graph) runner."""
