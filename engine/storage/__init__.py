"""On disk: config dataclasses, atomic writes, checkpoint bundles (config.json + safetensors) and the
vocoder cache. Loading never imports training code."""
