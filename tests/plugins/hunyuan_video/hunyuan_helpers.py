"""Settings and helpers shared by the HunyuanVideo plugin tests (a module with a unique name, so
that test files can import it; conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch

# Small settings: a 9-frame 32x32 video is a 3-frame 8x8 latent (VAE 4x4x4), 48 tokens (patch 2).
SIZE, FRAMES, TEXT_LEN = 32, 9, 16
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale
SMALL = {
    "height": SIZE,
    "width": SIZE,
    "num_frames": FRAMES,
    "max_sequence_length": TEXT_LEN,
    "lora_rank": RANK,
    "lora_alpha": ALPHA,
}


def load_pipeline(pipeline_class: type, path: Path):  # noqa: ANN201 - a diffusers pipeline
    """The diffusers pipeline from ``path``, its Llama tokenizer read with AutoTokenizer (see
    base.py: the LlamaTokenizerFast named in model_index.json mis-reads Llama 3's tokenizer.json
    under transformers 5), VAE tiling on as in the policy's default."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    pipe = pipeline_class.from_pretrained(path, tokenizer=tokenizer, local_files_only=True)
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A random conditioning image [3, H, W] in [0, 1]."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
