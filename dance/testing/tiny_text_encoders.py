"""Tiny random text encoders of the real classes, for tiny test checkpoints.

The counterpart of :mod:`dance.testing.tiny_tokenizers`: an encoder sized for one of those
tokenizers, with the real model's architecture options, drawn from the global RNG (seed it, or
fork it, around the call; the same seed gives the same weights).
"""

from __future__ import annotations

from typing import Any

TEXT_DIM = 32  # hidden size of the tiny text encoders


def tiny_clip_text_encoder(tokenizer: Any, hidden_size: int = TEXT_DIM) -> Any:
    """A random two-layer ``CLIPTextModel`` with OpenAI CLIP's text options (quick GELU, 77
    positions) whose vocabulary and special token ids are ``tokenizer``'s."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=hidden_size,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
