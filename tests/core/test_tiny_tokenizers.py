"""The locally built tiny tokenizers: stable output (checkpoints ship files built by them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dance.testing.tiny_tokenizers import (
    clip_tokenizer,
    clip_tokenizer_from_vocab_files,
    llama3_tokenizer,
    t5_tokenizer,
)

PROMPTS = [
    "a photo of a cat",
    "Two blue Squares left of a red circle, cinematic lighting!",
    "unknownword 123 café",
]


def test_clip_and_t5_tokenize_as_the_bundled_flux_tokenizer_files() -> None:
    """The bundled FLUX model ships tokenizer files built with these builders; a change in the
    builders would silently change every tiny checkpoint's token ids."""
    dance_flux = pytest.importorskip("dance_flux")
    from transformers import CLIPTokenizerFast, T5TokenizerFast

    shapes = Path(dance_flux.__file__).parent / "bundled" / "shapes"
    for built, saved in (
        (clip_tokenizer(), CLIPTokenizerFast.from_pretrained(shapes / "tokenizer")),
        (t5_tokenizer(), T5TokenizerFast.from_pretrained(shapes / "tokenizer_2")),
    ):
        assert len(built) == len(saved)
        for prompt in PROMPTS:
            assert built(prompt).input_ids == saved(prompt).input_ids, prompt


def test_listed_words_become_tokens_and_others_fall_back_to_bytes() -> None:
    clip = clip_tokenizer_from_vocab_files(["astronaut"])
    tokens = clip.convert_ids_to_tokens(clip("astronaut zq").input_ids)
    assert tokens == ["<|startoftext|>", "astronaut</w>", "z", "q</w>", "<|endoftext|>"]
    llama = llama3_tokenizer("<|begin_of_text|>Describe the video", words=["castle"])
    ids = llama("Describe the video castle").input_ids
    assert ids[0] == llama.bos_token_id and len(ids) == 5  # BOS + 4 whole-word pieces
