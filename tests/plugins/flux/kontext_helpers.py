"""Shared bits of the FLUX.1 Kontext tests."""

from __future__ import annotations

import torch

SIZE = 32  # output and (by default) source images: 32x32 pixels, a 16x16 latent, 64 tokens


def source_image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A random source image [3, H, W] in [0, 1]."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
