"""The networks: the noise-conditioned classifier (with its explicit adjoint), the score backbones
(ScoreSubnet on the classifier's taps, the two-model baseline's U-Net), the evaluation classifier and the
HiFi-GAN generator. Each is a plain ``nn.Module``; preconditioning, guidance and sampling live in
``engine.diffusion``, weights on disk in ``engine.storage``."""
