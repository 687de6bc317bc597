"""Fixtures for the FLUX plugin tests: one tiny random checkpoint per session, real layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kontext_helpers import source_image

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


# --- FLUX.1 Kontext ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FLUX.1 Kontext checkpoint (FluxKontextPipeline's layout), built once."""
    from dance_flux.tiny import build_tiny_flux

    path = tmp_path_factory.mktemp("kontext") / "tiny-kontext"
    build_tiny_flux(path, seed=0, kontext=True)
    return path


@pytest.fixture(scope="session")
def edit_prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL file of editing prompts with their source images (PNG, relative paths)."""
    import json

    from PIL import Image

    folder = tmp_path_factory.mktemp("edit-prompts")
    lines = []
    for i, text in enumerate(["make the sky red", "add a hat", "turn it into a sketch"]):
        pixels = (source_image(i, 40, 48).permute(1, 2, 0) * 255).round().to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"source{i}.png")
        lines.append(json.dumps({"prompt": text, "image": f"source{i}.png"}))
    path = folder / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_kontext(tiny_kontext: Path) -> Callable[..., FluxPolicy]:
    """Build a flux-kontext policy through the config path, CPU, fp32, source images at 32x32."""
    from dance_flux.kontext import FluxKontextConfig, FluxKontextPolicy

    def make(**overrides: object) -> FluxPolicy:
        values = {
            "model": str(tiny_kontext),
            "height": SIZE,
            "width": SIZE,
            "max_sequence_length": T5_LEN,
            "lora_rank": RANK,
            "lora_alpha": ALPHA,
            "image_size": "source",
            **overrides,
        }
        return FluxKontextPolicy(build(FluxKontextConfig, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def kontext_pipe(tiny_kontext: Path):
    """A fresh FluxKontextPipeline from the tiny checkpoint (the reference implementation)."""
    from diffusers import FluxKontextPipeline

    pipeline = FluxKontextPipeline.from_pretrained(tiny_kontext, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
