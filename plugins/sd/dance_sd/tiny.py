"""A tiny random Stable Diffusion 1.x checkpoint in the real diffusers layout, for tests and smoke
runs.

Every part is the class SD 1.4 / 1.5 uses (CLIPTextModel, CLIPTokenizer, AutoencoderKL,
UNet2DConditionModel, PNDMScheduler with SD's scheduler config), only tiny, written with
``StableDiffusionPipeline.save_pretrained`` without safety checker, so that loading it exercises the
code path of ``stable-diffusion-v1-5/stable-diffusion-v1-5``. The tokenizer folder holds
``vocab.json`` and ``merges.txt`` as the real one does; its byte-level BPE vocabulary is built from
a word list (each word's characters merged left to right) by :mod:`dance.testing.tiny_tokenizers`,
so no download is involved.

    python -m dance_sd.tiny OUT_DIR
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_text_encoders import TEXT_DIM, tiny_clip_text_encoder
from dance.testing.tiny_tokenizers import clip_tokenizer_from_vocab_files, write_clip_vocab_files
from dance.testing.tiny_vae import tiny_autoencoder_kl

# Words that become whole tokens: test prompts tokenize into real pieces, other words into
# characters (every byte has a token, so nothing maps to an unknown token). A list of its own, not
# dance.testing.tiny_tokenizers.WORDS: the tiny SD checkpoint's vocabulary stays as it was built.
_WORD_TEXT = """
a an the of in on at with and or by to from under over near photo picture painting portrait
cat dog bird horse fish fox owl bear robot astronaut man woman child red green blue yellow orange
purple pink black white gray brown golden small large old young happy beautiful tree forest
flower garden river lake ocean beach mountain sky sun moon star night city street house castle
car boat table chair book cup window circle circles square squares triangle triangles two three
left right top bottom style oil watercolor digital cinematic lighting detailed realistic
"""
WORDS = _WORD_TEXT.split()
# Stable Diffusion 1.x's scheduler_config.json (PNDMScheduler, as the v1-5 repository ships it).
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def clip_tokenizer() -> Any:
    """The tiny transformers CLIPTokenizer (77 tokens, pad = end of text, as SD's), read from
    vocab.json and merges.txt as the real one is."""
    return clip_tokenizer_from_vocab_files(WORDS)


def tiny_components(seed: int = 0, vae_blocks: int = 2) -> dict[str, Any]:
    """Random tiny SD parts drawn from a forked RNG seeded with ``seed``.

    The VAE has ``vae_blocks`` blocks (scale factor ``2 ** (vae_blocks - 1)``; SD's has 4, factor
    8). The UNet has SD's block structure (cross-attention down blocks, a plain down block and the
    mirrored up blocks), two levels only, with SD's ``attention_head_dim`` convention (heads).
    """
    from diffusers import UNet2DConditionModel

    tokenizer = clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_clip_text_encoder(tokenizer)
        # SD 1.x's VAE normalisation (0.18215) and quant convs.
        vae = tiny_autoencoder_kl((8, 16, 16, 16)[:vae_blocks])
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=TEXT_DIM,  # the text encoder's hidden size
            attention_head_dim=2,
        )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet}


def build_tiny_sd(path: str | Path, seed: int = 0, vae_blocks: int = 2) -> Path:
    """Write a tiny random SD 1.x checkpoint to ``path`` (diffusers layout, safetensors).

    With the default two-block VAE a 32x32 image has a 4 x 16 x 16 latent. The result depends
    only on ``seed``; the global RNG is left untouched.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    parts = tiny_components(seed, vae_blocks)
    pipe = StableDiffusionPipeline(
        **parts,
        scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = save_pipeline(pipe, path)
    write_clip_vocab_files(path / "tokenizer", WORDS)
    # The SD repositories' scheduler_config.json also says clip_sample: false (a key PNDM ignores);
    # DDIMScheduler.from_config reads it, and DDIM's own default would clip x0 to [-1, 1].
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text())
    scheduler_config["clip_sample"] = False
    scheduler_file.write_text(json.dumps(scheduler_config, indent=2, sort_keys=True) + "\n")
    return path


FLAGS = {"--vae-blocks": {"type": int, "default": 2, "help": "VAE factor 2^(blocks-1)"}}


def main(argv: list[str] | None = None) -> None:
    tiny_checkpoint_main("Stable Diffusion", build_tiny_sd, argv, **FLAGS)


if __name__ == "__main__":
    main()
