"""Tiny random HunyuanVideo (text-to-video) and SkyReels-V1 (image-to-video) checkpoints in the real
diffusers layouts, for tests and smoke runs.

Every part is the real class the models use (LlamaModel and a Llama 3 style byte-level BPE
tokenizer, CLIPTextModel and its tokenizer, AutoencoderKLHunyuanVideo,
HunyuanVideoTransformer3DModel, FlowMatchEulerDiscreteScheduler), only tiny, written with the
pipeline's ``save_pretrained`` so that loading exercises the same code path as
``hunyuanvideo-community/HunyuanVideo``. Nothing is downloaded: the tokenizers are built locally
by :mod:`dance.testing.tiny_tokenizers`.

    python -m dance_hunyuan_video.tiny OUT_DIR [--i2v]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_text_encoders import TEXT_DIM, tiny_clip_text_encoder, tiny_llama_encoder
from dance.testing.tiny_tokenizers import clip_tokenizer, llama3_tokenizer
from dance_hunyuan_video.prompting import DEFAULT_TEMPLATE

LATENT_CHANNELS = 4


def llama_tokenizer() -> Any:
    """The tiny Llama 3 style tokenizer, right padding (HunyuanVideoTransformer3DModel masks the
    text tokens after the first sum(mask) ones, so padding must come last).

    Every piece of the HunyuanVideo prompt template is one token, as in Llama 3's 128k
    vocabulary, so that the template's prefix is 95 tokens long here too: the pipeline's
    ``crop_start``."""
    return llama3_tokenizer(DEFAULT_TEMPLATE.replace("{}", ""))


def tiny_text_encoders(tokenizer: Any, tokenizer_2: Any) -> tuple[Any, Any]:
    """Random tiny LlamaModel (3 layers: the pipeline reads the third hidden state from the end)
    and CLIPTextModel, drawn from the global RNG (seed or fork it around the call)."""
    return tiny_llama_encoder(tokenizer), tiny_clip_text_encoder(tokenizer_2)


def tiny_vae() -> Any:
    """A three-block AutoencoderKLHunyuanVideo: 4x spatial and (as the real one) 4x causal temporal
    compression, so a 9-frame 32x32 video is a 3-frame 8x8 latent."""
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=0.476986,  # the real VAE's
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
    )


def build_tiny_hunyuan(path: str | Path, seed: int = 0, i2v: bool = False) -> Path:
    """Write a tiny random checkpoint to ``path``: HunyuanVideoPipeline's layout, or with
    ``i2v`` HunyuanSkyreelsImageToVideoPipeline's (a transformer that reads the noisy latents and
    the image latents concatenated over channels). Depends only on ``seed``; the global RNG is left
    untouched."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanSkyreelsImageToVideoPipeline,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    # The pipeline's components by name.
    parts: dict[str, Any] = {"tokenizer": llama_tokenizer(), "tokenizer_2": clip_tokenizer()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts["text_encoder"], parts["text_encoder_2"] = tiny_text_encoders(
            parts["tokenizer"], parts["tokenizer_2"]
        )
        parts["vae"] = tiny_vae()
        parts["transformer"] = HunyuanVideoTransformer3DModel(
            in_channels=LATENT_CHANNELS * (2 if i2v else 1),
            out_channels=LATENT_CHANNELS,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM,
            rope_axes_dim=(4, 6, 6),  # sums to the head dim, as (16, 56, 56) does for 128
        )
    # The community checkpoint's scheduler config (shift 7).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipeline_class = HunyuanSkyreelsImageToVideoPipeline if i2v else HunyuanVideoPipeline
    pipe = pipeline_class(scheduler=scheduler, **parts)
    path = save_pipeline(pipe, path)
    # The community checkpoint's model_index.json names the Llama tokenizer class this way.
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index["tokenizer"] = ["transformers", "LlamaTokenizerFast"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


FLAGS = {
    "--i2v": {
        "action": "store_true",
        "help": "the SkyReels-V1 image-to-video layout (skyreels-i2v)",
    }
}


def main(argv: list[str] | None = None) -> None:
    def label(options: dict[str, Any]) -> str:
        return "SkyReels-V1 I2V" if options["i2v"] else "HunyuanVideo T2V"

    tiny_checkpoint_main(label, build_tiny_hunyuan, argv, **FLAGS)


if __name__ == "__main__":
    main()
