"""Training: the shared loop (EMA, wall-clock budget, resumable state) and one module per model trained."""
