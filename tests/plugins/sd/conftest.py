"""Fixtures for the Stable Diffusion plugin tests: one tiny random checkpoint per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.interfaces import Runtime
from dance_sd.policy import SDConfig, SDPolicy

# Small settings: a 32x32 image is a 4x16x16 latent (the tiny VAE's factor is 2).
SIZE = 32
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD 1.x checkpoint in the real diffusers layout, built once per session."""
    from dance_sd.tiny import build_tiny_sd

    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    build_tiny_sd(path, seed=0)
    return path


@pytest.fixture
def make_policy(tiny_sd: Path) -> Callable[..., SDPolicy]:
    """Build a policy through the registry's config path (build + validate), CPU, fp32."""

    def make(**overrides: object) -> SDPolicy:
        values = {
            "model": str(tiny_sd),
            "height": SIZE,
            "width": SIZE,
            "lora_rank": RANK,
            "lora_alpha": ALPHA,
            **overrides,
        }
        return SDPolicy(build(SDConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def pipe(tiny_sd: Path):
    """A fresh StableDiffusionPipeline from the same directory with a DDIMScheduler made from the
    checkpoint's scheduler config (as DanceGRPO's SD script switches to DDIM): the reference."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""

    def apply(policy: SDPolicy, seed: int = 1, std: float = 0.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in policy.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)

    return apply
