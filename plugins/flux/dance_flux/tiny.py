"""A tiny random FLUX checkpoint in the real diffusers layout, for tests and smoke runs.

Every part is the real class FLUX.1 uses (CLIPTextModel, T5EncoderModel, their fast tokenizers,
AutoencoderKL, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler), only tiny, and the result
is written with ``FluxPipeline.save_pretrained`` so that loading it exercises the same code path as
``black-forest-labs/FLUX.1-dev``. No download is involved: the tokenizers are built locally from a
built-in word list (BPE merges and Unigram scores learned from it) by
:mod:`dance.testing.tiny_tokenizers`.

    python -m dance_flux.tiny OUT_DIR             # FLUX.1 (FluxPipeline)
    python -m dance_flux.tiny OUT_DIR --kontext   # FLUX.1 Kontext (FluxKontextPipeline)

A Kontext checkpoint has the same folders and component classes; its model_index.json names
FluxKontextPipeline, and its scheduler shifts sigmas by the token count (use_dynamic_shifting, as
black-forest-labs/FLUX.1-Kontext-dev's scheduler config does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_text_encoders import TEXT_DIM, tiny_clip_text_encoder, tiny_t5_encoder
from dance.testing.tiny_tokenizers import clip_tokenizer, t5_tokenizer
from dance.testing.tiny_vae import tiny_autoencoder_kl


def _axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (text/index, row, column) summing to the head dim, each even, like FLUX's
    (16, 56, 56) for 128."""
    side = 2 * (head_dim // 6)
    return (head_dim - 2 * side, side, side)


def tiny_text_encoders(tokenizer: Any, tokenizer_2: Any) -> tuple[Any, Any]:
    """Random tiny CLIP and T5 (v1.1) text encoders for the tiny tokenizers, drawn from the
    global RNG (seed it, or fork it, around the call)."""
    return tiny_clip_text_encoder(tokenizer), tiny_t5_encoder(tokenizer_2)


def tiny_flux_transformer(
    num_layers: int = 1,
    num_single_layers: int = 1,
    width: int = 32,
    num_attention_heads: int = 2,
    latent_channels: int = 4,
    guidance_embeds: bool = True,
    axes_dims_rope: tuple[int, int, int] | None = None,
) -> Any:
    """A random FluxTransformer2DModel of hidden size ``width`` (heads x head dim) over 2x2 packed
    latents and the tiny text encoders' embeddings, drawn from the global RNG."""
    from diffusers import FluxTransformer2DModel

    if width % num_attention_heads or (width // num_attention_heads) % 2:
        raise ValueError(f"width {width} must be num_attention_heads x an even head dim")
    head_dim = width // num_attention_heads
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,  # 2x2 packed latent patches
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=TEXT_DIM,  # T5 d_model
        pooled_projection_dim=TEXT_DIM,  # CLIP hidden size
        guidance_embeds=guidance_embeds,
        axes_dims_rope=axes_dims_rope or _axes_dims(head_dim),
    )


def build_tiny_flux(
    path: str | Path, seed: int = 0, kontext: bool = False, **transformer: Any
) -> Path:
    """Write a tiny random FLUX checkpoint to ``path`` (diffusers layout, safetensors).

    ``transformer`` holds options of :func:`tiny_flux_transformer` (``width`` is its hidden
    size, heads x head dim). The VAE has two blocks, so its scale factor is 2 and a 32x32 image
    has a 16x16 latent (64 packed tokens). The result depends only on ``seed``; the global RNG is
    left untouched. ``kontext`` writes it as a FluxKontextPipeline (FLUX.1 Kontext's layout).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline

    # FluxPipeline's components by name.
    parts: dict[str, Any] = {"tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts["text_encoder"], parts["text_encoder_2"] = tiny_text_encoders(
            parts["tokenizer"], parts["tokenizer_2"]
        )
        # FLUX's VAE normalisation constants and its lack of quant convs.
        parts["vae"] = tiny_autoencoder_kl(
            latent_channels=transformer.get("latent_channels", 4),
            scaling_factor=0.3611,
            shift_factor=0.1159,
            quant_convs=False,
        )
        parts["transformer"] = tiny_flux_transformer(**transformer)
    # FLUX.1-Kontext-dev's scheduler shifts by resolution; the tiny FLUX one by a fixed 3.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=kontext)
    pipe = (FluxKontextPipeline if kontext else FluxPipeline)(scheduler=scheduler, **parts)
    return save_pipeline(pipe, path)


FLAGS = {
    "--num-layers": {"type": int, "default": 1},
    "--num-single-layers": {"type": int, "default": 1},
    "--width": {"type": int, "default": 32},
    "--kontext": {"action": "store_true", "help": "write FLUX.1 Kontext (FluxKontextPipeline)"},
}


def main(argv: list[str] | None = None) -> None:
    tiny_checkpoint_main(
        lambda options: "FLUX.1 Kontext" if options["kontext"] else "FLUX",
        build_tiny_flux,
        argv,
        **FLAGS,
    )


if __name__ == "__main__":
    main()
