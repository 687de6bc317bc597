"""Settings and helpers shared by the Wan plugin tests (a module with a unique name, so that test
files can import it; conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch

# Small settings: a 5-frame 32x32 video is a 2-frame 4x4 latent (VAE 4x8x8), 8 tokens (patch 2);
# TI2V-5B's VAE compresses 16x, so its tests use 64x64.
SIZE, TI2V_SIZE, FRAMES, TEXT_LEN = 32, 64, 5, 16
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale
SMALL = {
    "height": SIZE,
    "width": SIZE,
    "num_frames": FRAMES,
    "max_sequence_length": TEXT_LEN,
    "lora_rank": RANK,
    "lora_alpha": ALPHA,
}
BOUNDARY = 0.95  # the tiny A14B's boundary_ratio (see conftest.py)
TEXTS = ["a cat on the beach", "a red fox in the snow, cinematic lighting"]


def load_pipeline(pipeline_class: type, path: Path):  # noqa: ANN201 - a diffusers pipeline
    """The diffusers pipeline from ``path`` with VAE tiling on, as the policy's default."""
    pipe = pipeline_class.from_pretrained(path, local_files_only=True)
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A random conditioning image [3, H, W] in [0, 1]."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
