"""Tiny random text encoders of the real classes, for tiny test checkpoints.

The counterpart of :mod:`dance.testing.tiny_tokenizers`: an encoder sized for one of those
tokenizers, with the real model's architecture options, drawn from the global RNG (seed it, or
fork it, around the call; the same seed gives the same weights).
"""

from __future__ import annotations

from typing import Any

TEXT_DIM = 32  # hidden size of the tiny text encoders


def tiny_clip_text_encoder(
    tokenizer: Any, hidden_size: int = TEXT_DIM, with_projection: bool = False
) -> Any:
    """A random two-layer ``CLIPTextModel`` with OpenAI CLIP's text options (quick GELU, 77
    positions) whose vocabulary and special token ids are ``tokenizer``'s;
    ``CLIPTextModelWithProjection`` (SD3's two CLIP encoders) with ``with_projection``."""
    import transformers

    model_class = (
        transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    )
    return model_class(
        transformers.CLIPTextConfig(
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


def tiny_t5_encoder(tokenizer: Any, hidden_size: int = TEXT_DIM) -> Any:
    """A random two-layer ``T5EncoderModel`` with T5 v1.1's options (gated GELU, untied
    embeddings), as FLUX's and SD3's ``text_encoder_2``/``text_encoder_3``."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden_size,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",  # T5 v1.1
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_llama_encoder(tokenizer: Any, hidden_size: int = TEXT_DIM) -> Any:
    """A random three-layer ``LlamaModel`` (HunyuanVideo reads the third hidden state from the
    end) with grouped-query attention, as HunyuanVideo's text encoder."""
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
