"""A tiny random Stable Diffusion 3 checkpoint in the real diffusers layout, for tests and smoke
runs.

Every part is the class SD3.5 uses (two CLIPTextModelWithProjection encoders, a T5EncoderModel,
their tokenizers, a 16-channel AutoencoderKL with SD3's shift and scaling factors and no quant
convs, an SD3Transformer2DModel with SD3.5's RMS query-key norm and a dual-attention block,
FlowMatchEulerDiscreteScheduler with shift 3), only tiny, written with
``StableDiffusion3Pipeline.save_pretrained`` so that loading it exercises the code path of
``stabilityai/stable-diffusion-3.5-medium``. The tokenizers are built locally by
:mod:`dance.testing.tiny_tokenizers`: no download.

    python -m dance_sd3.tiny OUT_DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_text_encoders import TEXT_DIM, tiny_clip_text_encoder, tiny_t5_encoder
from dance.testing.tiny_tokenizers import clip_tokenizer, t5_tokenizer
from dance.testing.tiny_vae import tiny_autoencoder_kl

LATENT_CHANNELS = 16  # SD3's VAE
# Wider than the two CLIP encoders side by side (2 x 32), as T5-XXL's 4096 is wider than
# CLIP-L + CLIP-G's 2048: the pipeline zero-pads the CLIP embeddings to T5's width.
T5_DIM = 3 * TEXT_DIM


def tiny_sd3_transformer(num_layers: int = 2, heads: int = 2, head_dim: int = 16) -> Any:
    """A random SD3Transformer2DModel over 2x2 patches of 16-channel latents (up to 32x32 latents,
    64x64 pixels with the tiny VAE), SD3.5-style: RMS query-key norm, block 0 with the second
    attention."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=2 * TEXT_DIM,  # both CLIP projections side by side
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def build_tiny_sd3(path: str | Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Write a tiny random SD3 checkpoint to ``path`` (diffusers layout, safetensors).

    The VAE has two blocks (scale factor 2): a 32x32 image is a 16 x 16 x 16 latent, 64 tokens of
    2x2 patches. The result depends only on ``seed``; the global RNG is left untouched."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    # StableDiffusion3Pipeline's components by name.
    parts: dict[str, Any] = {
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "tokenizer_3": t5_tokenizer(),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for n in ("", "_2"):
            parts[f"text_encoder{n}"] = tiny_clip_text_encoder(
                parts[f"tokenizer{n}"], with_projection=True
            )
        parts["text_encoder_3"] = tiny_t5_encoder(parts["tokenizer_3"], hidden_size=T5_DIM)
        # SD3's VAE normalisation constants, 16 latent channels and no quant convs.
        parts["vae"] = tiny_autoencoder_kl(
            latent_channels=LATENT_CHANNELS,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            quant_convs=False,
        )
        parts["transformer"] = tiny_sd3_transformer(num_layers)
    # SD3.5's scheduler config: shift 3.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return save_pipeline(StableDiffusion3Pipeline(scheduler=scheduler, **parts), path)


def main(argv: list[str] | None = None) -> None:
    tiny_checkpoint_main(
        "Stable Diffusion 3", build_tiny_sd3, argv, **{"--num-layers": {"type": int, "default": 2}}
    )


if __name__ == "__main__":
    main()
