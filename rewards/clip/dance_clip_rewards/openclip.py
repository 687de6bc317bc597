"""open_clip models for the rewards: architecture by name, weights from a local file.

The architecture comes from open_clip's model config (``ViT-H-14``, ``ViT-L-14``, ...), built with
``pretrained=None`` so that open_clip never downloads; the weights are then loaded from a file with
:func:`dance_clip_rewards.weights.load_state_dict`. An open_clip pretrained tag (``openai``,
``dfn5b``, ...) supplies what the weights file does not say: whether the towers use QuickGELU, the
preprocessing (mean, std, resize mode) and where the file lives on the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dance.errors import ConfigError, did_you_mean
from dance.interfaces import Runtime
from dance_clip_rewards.weights import load_into, load_state_dict

# File names open_clip publishes its weights under on the hub, safest first.
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def pretrained_config(model_name: str, tag: str) -> dict[str, Any]:
    """open_clip's table entry for ``(model_name, tag)``; ``{}`` for no tag; ConfigError if the
    architecture or the tag is unknown to open_clip."""
    import open_clip

    if open_clip.get_model_config(model_name) is None:
        known = open_clip.list_models()
        raise ConfigError(
            f"unknown open_clip model '{model_name}'.{did_you_mean(model_name, known)}"
        )
    if not tag:
        return {}
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ConfigError(
            f"open_clip has no pretrained tag '{tag}' for '{model_name}' "
            f"(known: {', '.join(tags) or 'none'})."
        )
    return dict(cfg)


def hub_files(tag_cfg: dict[str, Any]) -> dict[str, Sequence[str]]:
    """Where the tag's weights live in the Hugging Face cache: ``{repo_id: file names}``."""
    repo = (tag_cfg.get("hf_hub") or "").strip("/")
    return {repo: HUB_WEIGHT_FILES} if repo else {}


@dataclass
class OpenClip:
    """A frozen open_clip model with its tokenizer and preprocess config."""

    model: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings (fp32) of preprocessed pixels ``[N, 3, h, w]``."""
        features = self.model.encode_image(pixels.to(self.device, self.dtype)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (fp32), tokenised with the model's tokenizer."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" when built with
    pretrained=None; here the weights are loaded right after, so that line would mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    root = logging.getLogger()
    notice = _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def build_open_clip(
    model_name: str, tag: str, checkpoint: Path, runtime: Runtime, what: str
) -> OpenClip:
    """Build ``model_name`` without weights, load ``checkpoint`` into it, freeze it and move it to
    the runtime's device in ``runtime.frozen_dtype``."""
    import open_clip

    tag_cfg = pretrained_config(model_name, tag)
    state = load_state_dict(checkpoint, what)
    with _quiet_random_init():
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg={k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg},
            pretrained_text=False,
        )
    load_into(model, state, f"{what} '{checkpoint}'")
    model.eval().requires_grad_(False)
    model.to(device=runtime.device, dtype=runtime.frozen_dtype)
    return OpenClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)),
        device=torch.device(runtime.device),
        dtype=runtime.frozen_dtype,
    )
