"""A tiny random FLUX checkpoint in the real diffusers layout, for tests and smoke runs.

Every part is the real class FLUX.1 uses (CLIPTextModel, T5EncoderModel, their fast tokenizers,
AutoencoderKL, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler), only tiny, and the result
is written with ``FluxPipeline.save_pretrained`` so that loading it exercises the same code path as
``black-forest-labs/FLUX.1-dev``. No download is involved: the tokenizers are built locally from a
built-in word list (BPE merges and Unigram scores learned from it) by
:mod:`dance.testing.tiny_tokenizers`.

    python -m dance_flux.tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_text_encoders import TEXT_DIM, tiny_clip_text_encoder
from dance.testing.tiny_tokenizers import clip_tokenizer, t5_tokenizer


def _axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (text/index, row, column) summing to the head dim, each even, like FLUX's
    (16, 56, 56) for 128."""
    side = 2 * (head_dim // 6)
    return (head_dim - 2 * side, side, side)


def tiny_text_encoders(tokenizer: Any, tokenizer_2: Any) -> tuple[Any, Any]:
    """Random tiny CLIP and T5 (v1.1) text encoders for the tiny tokenizers, drawn from the
    global RNG (seed it, or fork it, around the call)."""
    from transformers import T5Config, T5EncoderModel

    text_encoder = tiny_clip_text_encoder(tokenizer)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as in FLUX's text_encoder_2
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    return text_encoder, text_encoder_2


def build_tiny_flux(
    path: str | Path,
    seed: int = 0,
    num_layers: int = 1,
    num_single_layers: int = 1,
    width: int = 32,
    num_attention_heads: int = 2,
    latent_channels: int = 4,
    guidance_embeds: bool = True,
) -> Path:
    """Write a tiny random FLUX checkpoint to ``path`` (diffusers layout, safetensors).

    ``width`` is the transformer's hidden size (heads x head dim). The VAE has two blocks, so its
    scale factor is 2 and a 32x32 image has a 16x16 latent (64 packed tokens). The result depends
    only on ``seed``; the global RNG is left untouched.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    if width % num_attention_heads or (width // num_attention_heads) % 2:
        raise ValueError(f"width {width} must be num_attention_heads x an even head dim")
    head_dim = width // num_attention_heads
    text_dim = TEXT_DIM

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = tiny_text_encoders(tokenizer, tokenizer_2)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=latent_channels,
            sample_size=32,
            # FLUX's VAE normalisation constants and its lack of quant convs.
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=latent_channels * 4,  # 2x2 packed latent patches
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=text_dim,  # T5 d_model
            pooled_projection_dim=text_dim,  # CLIP hidden size
            guidance_embeds=guidance_embeds,
            axes_dims_rope=_axes_dims(head_dim),
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random FLUX checkpoint.")
    parser.add_argument("out_dir", help="directory to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--num-single-layers", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_tiny_flux(
        args.out_dir,
        seed=args.seed,
        num_layers=args.num_layers,
        num_single_layers=args.num_single_layers,
        width=args.width,
    )
    print(f"wrote a tiny FLUX checkpoint to {path} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
