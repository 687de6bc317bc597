"""Sampling without training: the denoising loop shared by rollouts, evaluation and `dance sample`
(:mod:`dance.sampling.generate`), Gaussian transitions for sampler plugins, and Best-of-N."""
