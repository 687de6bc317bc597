"""Tiny random Wan checkpoints in the real diffusers layouts, for tests and smoke runs.

Every part is the real class the Wan checkpoints name (UMT5EncoderModel and a T5-style Unigram
tokenizer, AutoencoderKLWan, WanTransformer3DModel, CLIPVisionModel and CLIPImageProcessor for
Wan2.1 I2V, FlowMatchEulerDiscreteScheduler), only tiny, written with the pipeline's
``save_pretrained`` so that loading exercises the code path of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``
and its siblings. Nothing is downloaded: the tokenizer is built by :mod:`dance.testing`.

    python -m dance_wan.tiny OUT_DIR [--i2v | --ti2v | --a14b]

- default: Wan2.1 T2V (WanPipeline: one transformer, 16 x 8 x 8 x 4 VAE compression).
- ``--i2v``: Wan2.1 I2V (WanImageToVideoPipeline: CLIP image encoder, a transformer reading
  noisy latents + 4 mask channels + condition latents).
- ``--ti2v``: Wan2.2 TI2V-5B (WanPipeline with ``expand_timesteps``: per-token timesteps, a
  residual VAE that patchifies 2x2 first, 16x spatial compression).
- ``--a14b``: Wan2.2 T2V-A14B (WanPipeline with ``transformer_2`` and ``boundary_ratio`` 0.875).
- ``--i2v-a14b``: Wan2.2 I2V-A14B (WanImageToVideoPipeline with two channel-condition experts,
  no CLIP image encoder, ``boundary_ratio`` 0.9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_text_encoders import TEXT_DIM
from dance.testing.tiny_tokenizers import t5_tokenizer

LATENT_CHANNELS = 4
TI2V_LATENT_CHANNELS = 8
IMAGE_DIM = 32  # hidden size of the tiny CLIP vision tower
A14B_BOUNDARY = 0.875  # Wan2.2-T2V-A14B-Diffusers' model_index.json
KINDS = ("t2v", "i2v", "ti2v", "a14b", "i2v-a14b")
I2V_A14B_BOUNDARY = 0.9  # Wan2.2-I2V-A14B-Diffusers' model_index.json


def tiny_umt5(tokenizer: Any) -> Any:
    """A random two-layer UMT5EncoderModel (relative attention buckets per layer, as UMT5)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_vae(ti2v: bool = False) -> Any:
    """AutoencoderKLWan with the real down-sampling plan (8x spatial, 4x causal temporal) and
    tiny widths. ``ti2v``: Wan2.2's residual VAE that patchifies 2x2 first (16x spatial)."""
    from diffusers import AutoencoderKLWan

    z = TI2V_LATENT_CHANNELS if ti2v else LATENT_CHANNELS
    gen = torch.Generator().manual_seed(1)
    options: dict[str, Any] = {}
    if ti2v:
        options = {
            "is_residual": True,
            "patch_size": 2,
            "in_channels": 12,
            "out_channels": 12,
            "scale_factor_spatial": 16,
        }
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=z,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        # Per-channel statistics that are not 0 / 1, so that a lost normalisation shows.
        latents_mean=(torch.randn(z, generator=gen) * 0.5).tolist(),
        latents_std=(torch.rand(z, generator=gen) + 0.5).tolist(),
        **options,
    )


def tiny_transformer(in_channels: int, out_channels: int, image_dim: int | None = None) -> Any:
    """WanTransformer3DModel with two blocks, patch (1, 2, 2), 2 heads of 16."""
    from diffusers import WanTransformer3DModel

    heads, head_dim = 2, 16
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=image_dim,
        # Wan2.1 I2V: the image tokens get their own key / value projections of the inner width.
        added_kv_proj_dim=heads * head_dim if image_dim else None,
        rope_max_seq_len=64,
    )


def tiny_image_encoder() -> tuple[Any, Any]:
    """CLIPVisionModel (32 px, 8 px patches: 17 tokens) and its CLIPImageProcessor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=IMAGE_DIM,
        )
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return encoder, processor


def build_tiny_wan(
    path: str | Path, kind: str = "t2v", seed: int = 0, boundary_ratio: float | None = None
) -> Path:
    """Write a tiny random Wan checkpoint of ``kind`` (one of KINDS) to ``path``; the A14B
    kinds switch experts at ``boundary_ratio`` (default: the real checkpoint's). Depends only on
    ``seed``; the global RNG is left untouched."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tokenizer = t5_tokenizer()
    parts: dict[str, Any] = {"tokenizer": tokenizer}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts["text_encoder"] = tiny_umt5(tokenizer)
        parts["vae"] = tiny_vae(ti2v=kind == "ti2v")
        z = parts["vae"].config.z_dim
        if kind == "i2v":
            # Noisy latents, 4 mask channels (the VAE's temporal factor), condition latents.
            parts["transformer"] = tiny_transformer(2 * z + 4, z, image_dim=IMAGE_DIM)
            parts["image_encoder"], parts["image_processor"] = tiny_image_encoder()
        elif kind == "i2v-a14b":  # the same channel condition, no CLIP features, two experts
            parts["transformer"] = tiny_transformer(2 * z + 4, z)
            parts["transformer_2"] = tiny_transformer(2 * z + 4, z)
            parts["boundary_ratio"] = boundary_ratio or I2V_A14B_BOUNDARY
        else:
            parts["transformer"] = tiny_transformer(z, z)
        if kind == "a14b":
            parts["transformer_2"] = tiny_transformer(z, z)
            parts["boundary_ratio"] = boundary_ratio or A14B_BOUNDARY
        if kind == "ti2v":
            parts["expand_timesteps"] = True
    # Wan's flow_shift for 480p (the Diffusers repos ship UniPC with flow sigmas; the rollout
    # uses dance's own samplers, so the scheduler is only read by the pipeline).
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline_class = WanImageToVideoPipeline if kind.startswith("i2v") else WanPipeline
    return save_pipeline(pipeline_class(**parts), path)


def main(argv: list[str] | None = None) -> None:
    flags = {
        f"--{kind}": {"action": "store_const", "const": kind, "dest": "kind", "help": help}
        for kind, help in (
            ("i2v", "Wan2.1 I2V (wan-i2v)"),
            ("ti2v", "Wan2.2 TI2V-5B (wan-t2v / wan-i2v)"),
            ("a14b", "Wan2.2 T2V-A14B, two experts (wan-t2v)"),
            ("i2v-a14b", "Wan2.2 I2V-A14B, two experts (wan-i2v)"),
        )
    }
    tiny_checkpoint_main(
        lambda options: f"Wan {options['kind'] or 't2v'}",
        lambda out_dir, seed, kind: build_tiny_wan(out_dir, kind=kind or "t2v", seed=seed),
        argv,
        **flags,
    )


if __name__ == "__main__":
    main()
