"""A tiny random Qwen-Image checkpoint in the real diffusers layout, for tests and smoke runs.

Every part is the class Qwen-Image uses (a Qwen2_5_VLForConditionalGeneration text encoder with
its vision tower, a Qwen2Tokenizer, the 16-channel AutoencoderKLQwenImage with Qwen-Image's
latent mean and std, a QwenImageTransformer2DModel over 2x2 patches, FlowMatchEulerDiscreteScheduler
with Qwen-Image's dynamic-shift settings), only tiny, written with
``QwenImagePipeline.save_pretrained`` so that loading it exercises the code path of
``Qwen/Qwen-Image``. The tokenizer is built locally: no download.

    python -m dance_qwen_image.tiny OUT_DIR
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from dance.testing.tiny_cli import save_pipeline, tiny_checkpoint_main
from dance.testing.tiny_tokenizers import WORDS

LATENT_CHANNELS = 16  # Qwen-Image's VAE (z_dim)
TEXT_DIM = 32  # the tiny text encoder's width (Qwen2.5-VL-7B: 3584)
# The pipeline's prompt template: the system part (34 tokens with Qwen's tokenizer) is dropped
# from the embeddings, so the tiny tokenizer must cut it into as many tokens.
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity,"
    " text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n"
)
# Qwen2's pre-tokenizer (words, numbers one digit at a time, punctuation runs, newlines).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def qwen2_tokenizer(words: tuple[str, ...] | list[str] = WORDS) -> Any:
    """A byte-level BPE ``Qwen2Tokenizer`` with Qwen2's pre-tokenizer and chat special tokens,
    padding on the right with <|endoftext|>. Every pre-tokenized piece of the prompt template and
    every word of ``words`` (bare and after a space) is one token, as in Qwen's 151k vocabulary,
    so the template's system part is 34 tokens as with the real tokenizer."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer

    # The template between its special tokens, and every word bare and after a space.
    template = re.split("|".join(re.escape(s) for s in SPECIALS), TEMPLATE.format(""))
    corpus = template + [w for word in words for w in (word, " " + word)]
    # Learn merges until every pre-tokenized piece of the corpus is one token: merges learned
    # in order replay consistently, so the tokenizer rebuilt from vocab and merges agrees.
    learner = Tokenizer(BPE())
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    learner.train_from_iterator(corpus, trainer)
    model = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    return tokenizer


def tiny_qwen25_vl(tokenizer: Any) -> Any:
    """A random two-layer Qwen2_5_VLForConditionalGeneration (grouped-query attention, M-RoPE)
    with a one-block vision tower: the class and config layout of Qwen2.5-VL-7B-Instruct."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    heads, head_dim = 2, TEXT_DIM // 2
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_DIM,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            # M-RoPE's temporal, height, width sections of the rotary half-dimension.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2, 3, 3],
            },
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_heads": 2,
            "out_hidden_size": TEXT_DIM,
            "fullatt_block_indexes": [0],
        },
    )
    assert head_dim // 2 == sum(config.text_config.rope_parameters["mrope_section"])
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_qwen_image_vae() -> Any:
    """A random AutoencoderKLQwenImage with two downsampling stages (scale factor 4, computed by
    the pipeline as 2 ** len(temperal_downsample)) and Qwen-Image's latent mean and std."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
    )


def tiny_qwen_image_transformer(num_layers: int = 2, heads: int = 2, head_dim: int = 16) -> Any:
    """A random QwenImageTransformer2DModel over 2x2 patches of 16-channel latents."""
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=LATENT_CHANNELS * 4,
        out_channels=LATENT_CHANNELS,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(4, 6, 6),  # sums to head_dim, as (16, 56, 56) to 128
    )


def build_tiny_qwen_image(path: str | Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Write a tiny random Qwen-Image checkpoint to ``path`` (diffusers layout, safetensors).

    The VAE's scale factor is 4: a 32x32 image is a 16 x 8 x 8 latent, 16 tokens of 2x2 patches.
    The result depends only on ``seed``; the global RNG is left untouched."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer = qwen2_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_qwen25_vl(tokenizer)
        vae = tiny_qwen_image_vae()
        transformer = tiny_qwen_image_transformer(num_layers)
    # Qwen-Image's scheduler_config.json: exponential dynamic shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    pipeline = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return save_pipeline(pipeline, path)


def main(argv: list[str] | None = None) -> None:
    tiny_checkpoint_main(
        "Qwen-Image", build_tiny_qwen_image, argv, **{"--num-layers": {"type": int, "default": 2}}
    )


if __name__ == "__main__":
    main()
