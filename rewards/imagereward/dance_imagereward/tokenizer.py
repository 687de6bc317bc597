"""BLIP's tokenizer as ImageReward uses it.

BLIP's ``init_tokenizer`` (``ImageReward/models/BLIP/blip.py``) loads bert-base-uncased and adds
``[DEC]`` as the bos token and ``[ENC]`` as an extra special token (ids 30522 and 30523, hence the
text encoder's 30524 embeddings). ImageReward tokenises a prompt with ``padding="max_length",
truncation=True, max_length=35`` and feeds the ids as they are: the first token stays ``[CLS]``
(BLIP's image-text matching would swap in ``[ENC]``; ImageReward does not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dance.errors import ModelLayoutError
from dance.models.model_layout import load_tokenizer as load_local_tokenizer

DEFAULT_TOKENIZER = "bert-base-uncased"
MAX_LENGTH = 35  # ImageReward.score: max_length=35


VOCAB_FILES = ("tokenizer.json", "vocab.txt")


def _not_found(name: str, reason: str) -> ModelLayoutError:
    return ModelLayoutError(
        f"BERT tokenizer '{name}' {reason}; set the imagereward option `tokenizer` to a directory "
        f"with bert-base-uncased's vocab.txt (e.g. rewards.imagereward.tokenizer=/path/to/"
        f"bert-base-uncased), or run `huggingface-cli download bert-base-uncased` on a machine "
        f"with network access"
    )


def tokenizer_directory(name: str) -> Path:
    """The directory holding the tokenizer files: ``name`` itself, or its snapshot in the local
    Hugging Face cache. transformers would quietly build an empty tokenizer from no files, so the
    files are looked for here."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not any((path / f).is_file() for f in VOCAB_FILES):
            raise _not_found(name, f"has neither {' nor '.join(VOCAB_FILES)}")
        return path
    if not path.exists():
        from huggingface_hub import try_to_load_from_cache

        for filename in VOCAB_FILES:
            try:
                found = try_to_load_from_cache(name, filename)
            except ValueError:  # not a repo id
                break
            if isinstance(found, str):
                return Path(found).parent
    raise _not_found(name, "is neither a directory nor in the local Hugging Face cache")


def load_tokenizer(name: str) -> Any:
    """bert-base-uncased (or ``name``: a directory or a Hub repo in the local cache) with BLIP's
    two added tokens. Never downloads."""
    from transformers import BertTokenizer

    directory = tokenizer_directory(name)
    tokenizer = load_local_tokenizer(BertTokenizer, directory)
    if tokenizer.convert_tokens_to_ids("[CLS]") == tokenizer.unk_token_id or len(tokenizer) <= 5:
        raise _not_found(name, f"in {directory} has no usable WordPiece vocabulary")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask ``[N, max_length]`` (int64), padded and truncated."""
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]
