"""A tiny random ``AutoencoderKL`` (the image VAE of Stable Diffusion, SD3 and FLUX), for tiny test
checkpoints: drawn from the global RNG (seed it, or fork it, around the call)."""

from __future__ import annotations

from typing import Any


def tiny_autoencoder_kl(
    block_out_channels: tuple[int, ...] = (8, 16),
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    quant_convs: bool = True,
    norm_num_groups: int = 4,
    sample_size: int = 32,
) -> Any:
    """One ResNet layer per block; the scale factor is ``2 ** (len(block_out_channels) - 1)``.
    ``scaling_factor`` and ``shift_factor`` are the model's latent normalisation (SD 1.x:
    0.18215 and none); ``quant_convs`` False drops the 1x1 quant convs, as FLUX's and SD3's VAEs
    do."""
    from diffusers import AutoencoderKL

    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        latent_channels=latent_channels,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
    )
