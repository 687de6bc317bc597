"""Fixtures for the HunyuanVideo plugin tests: one tiny random checkpoint per layout and session
(HunyuanVideoPipeline's and HunyuanSkyreelsImageToVideoPipeline's), and the diffusers pipelines
loaded from them as the reference implementation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hunyuan_helpers import SMALL, load_pipeline, random_image

from dance.config import build
from dance.interfaces import Runtime
from dance_hunyuan_video import (
    HunyuanVideoConfig,
    HunyuanVideoPolicy,
    SkyReelsI2VConfig,
    SkyReelsI2VPolicy,
)


def _build(tmp_path_factory: pytest.TempPathFactory, i2v: bool) -> Path:
    from dance_hunyuan_video.tiny import build_tiny_hunyuan

    path = tmp_path_factory.mktemp("hunyuan") / ("tiny-skyreels" if i2v else "tiny-hunyuan")
    build_tiny_hunyuan(path, seed=0, i2v=i2v)  # about 0.3 s (plus diffusers' first import)
    return path


@pytest.fixture(scope="session")
def tiny_hunyuan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random HunyuanVideo (text-to-video) checkpoint in the real diffusers layout."""
    return _build(tmp_path_factory, i2v=False)


@pytest.fixture(scope="session")
def tiny_skyreels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SkyReels-V1 (image-to-video) checkpoint in the real diffusers layout."""
    return _build(tmp_path_factory, i2v=True)


@pytest.fixture
def make_t2v(tiny_hunyuan: Path) -> Callable[..., HunyuanVideoPolicy]:
    """Build a text-to-video policy through the registry's config path (build + validate)."""

    def make(**overrides: object) -> HunyuanVideoPolicy:
        values = {"model": str(tiny_hunyuan), **SMALL, **overrides}
        return HunyuanVideoPolicy(build(HunyuanVideoConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def make_i2v(tiny_skyreels: Path) -> Callable[..., SkyReelsI2VPolicy]:
    """Build an image-to-video policy through the registry's config path (build + validate)."""

    def make(**overrides: object) -> SkyReelsI2VPolicy:
        values = {"model": str(tiny_skyreels), **SMALL, **overrides}
        return SkyReelsI2VPolicy(build(SkyReelsI2VConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def t2v_pipe(tiny_hunyuan: Path):  # noqa: ANN201
    from diffusers import HunyuanVideoPipeline

    return load_pipeline(HunyuanVideoPipeline, tiny_hunyuan)


@pytest.fixture
def i2v_pipe(tiny_skyreels: Path):  # noqa: ANN201
    from diffusers import HunyuanSkyreelsImageToVideoPipeline

    return load_pipeline(HunyuanSkyreelsImageToVideoPipeline, tiny_skyreels)


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""

    def apply(policy: HunyuanVideoPolicy, seed: int = 1, std: float = 0.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in policy.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * std)

    return apply


@pytest.fixture(scope="session")
def i2v_prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL prompt file of image-to-video prompts with PNG images beside it (relative paths)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("i2v-prompts")
    lines = []
    for i, text in enumerate(["a cat on the beach", "a red fox in the snow", "a dog running"]):
        pixels = (random_image(i, 40, 48).permute(1, 2, 0) * 255).round().to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"image{i}.png")
        lines.append(json.dumps({"prompt": text, "image": f"image{i}.png"}))
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
