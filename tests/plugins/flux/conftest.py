"""Fixtures for the FLUX plugin tests: one tiny random checkpoint per session, real layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.interfaces import Runtime
from dance_flux.policy import FluxConfig, FluxPolicy

# Small settings: a 32x32 image is a 16x16 latent (VAE factor 2), 64 packed tokens of 16 channels.
SIZE = 32
T5_LEN = 16
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale


@pytest.fixture
def make_policy(tiny_flux: Path) -> Callable[..., FluxPolicy]:
    """Build a policy through the registry's config path (build + validate), CPU, fp32."""

    def make(**overrides: object) -> FluxPolicy:
        values = {
            "model": str(tiny_flux),
            "height": SIZE,
            "width": SIZE,
            "max_sequence_length": T5_LEN,
            "lora_rank": RANK,
            "lora_alpha": ALPHA,
            **overrides,
        }
        return FluxPolicy(build(FluxConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def pipe(tiny_flux: Path):
    """A fresh FluxPipeline loaded from the same directory (the reference implementation)."""
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(tiny_flux, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""

    def apply(policy: FluxPolicy, seed: int = 1, std: float = 0.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in policy.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)

    return apply
