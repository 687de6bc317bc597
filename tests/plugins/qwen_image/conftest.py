"""Fixtures for the Qwen-Image plugin tests: one tiny random checkpoint per session, real layout,
and the diffusers pipeline loaded from it as the reference implementation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.interfaces import Runtime
from dance_qwen_image import QwenImageConfig, QwenImagePolicy

# A 32x32 image is a 16 x 8 x 8 latent (VAE factor 4), 16 tokens of 2x2 patches.
SIZE = 32
TEXT_LEN = 24
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale


@pytest.fixture(scope="session")
def tiny_qwen_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dance_qwen_image.tiny import build_tiny_qwen_image

    return build_tiny_qwen_image(tmp_path_factory.mktemp("qwen") / "tiny-qwen-image", seed=0)


@pytest.fixture
def policy_values(tiny_qwen_image: Path) -> dict[str, object]:
    return {
        "model": str(tiny_qwen_image),
        "height": SIZE,
        "width": SIZE,
        "max_sequence_length": TEXT_LEN,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
    }


@pytest.fixture
def make_policy(policy_values: dict[str, object]) -> Callable[..., QwenImagePolicy]:
    """Build a policy through the registry's config path (build + validate), CPU, fp32."""

    def make(**overrides: object) -> QwenImagePolicy:
        values = {**policy_values, **overrides}
        return QwenImagePolicy(build(QwenImageConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def pipe(tiny_qwen_image: Path):  # noqa: ANN201
    from diffusers import QwenImagePipeline

    pipeline = QwenImagePipeline.from_pretrained(tiny_qwen_image, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""

    def apply(policy: QwenImagePolicy, seed: int = 1, std: float = 0.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in policy.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)

    return apply
