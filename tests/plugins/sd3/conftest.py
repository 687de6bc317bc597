"""Fixtures for the SD3 plugin tests: one tiny random checkpoint per session, real layout, and the
diffusers pipeline loaded from it as the reference implementation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.interfaces import Runtime
from dance_sd3 import SD3Config, SD3Policy

# A 32x32 image is a 16 x 16 x 16 latent (VAE factor 2), 64 tokens of 2x2 patches.
SIZE = 32
T5_LEN = 16
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dance_sd3.tiny import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3", seed=0)


@pytest.fixture
def policy_values(tiny_sd3: Path) -> dict[str, object]:
    return {
        "model": str(tiny_sd3),
        "height": SIZE,
        "width": SIZE,
        "max_sequence_length": T5_LEN,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
    }


@pytest.fixture
def make_policy(policy_values: dict[str, object]) -> Callable[..., SD3Policy]:
    """Build a policy through the registry's config path (build + validate), CPU, fp32."""

    def make(**overrides: object) -> SD3Policy:
        values = {**policy_values, **overrides}
        return SD3Policy(build(SD3Config, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def pipe(tiny_sd3: Path):  # noqa: ANN201
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""

    def apply(policy: SD3Policy, seed: int = 1, std: float = 0.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in policy.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)

    return apply
