"""CLIP score: cosine similarity of image and prompt embeddings of an open_clip model.

``score = scale * cos(image, text)``, or ``scale * max(cos, 0)`` with ``floor_at_zero``.
Conventions in use (see docs/rewards/clip.md): the raw cosine (``scale=1``, the default),
CLIPScore of Hessel et al. 2021 (``scale=2.5``, ``floor_at_zero=true``) and torchmetrics'
CLIPScore (``scale=100``, ``floor_at_zero=true``). The model and its preprocessing come from
open_clip's tables: architecture by name, mean/std/resize mode/QuickGELU by pretrained tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.interfaces import Runtime
from dance_clip_rewards.base import ClipFamilyReward, ClipRewardOptions, unique
from dance_clip_rewards.openclip import build_open_clip, hub_files, pretrained_config
from dance_clip_rewards.preprocess import open_clip_transform, preprocess
from dance_clip_rewards.weights import resolve_file


@dataclass
class ClipScoreConfig(ClipRewardOptions):
    model: str = option(
        "ViT-H-14-378-quickgelu",
        "open_clip architecture (ViT-H-14-378-quickgelu for DFN5B, ViT-L-14 for OpenAI's "
        "ViT-L/14).",
    )
    pretrained: str = option(
        "dfn5b",
        "open_clip pretrained tag of the weights (dfn5b, openai, ...): sets QuickGELU, the "
        "preprocessing and where the weights sit in the Hugging Face cache. Empty: the "
        "architecture's defaults.",
    )
    checkpoint: str = option(
        "",
        "open_clip weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin). "
        "Empty: the tag's Hugging Face repository in the local cache.",
    )
    scale: float = option(
        1.0,
        "Multiplies the cosine: 1 raw cosine, 2.5 CLIPScore (Hessel et al.), 100 torchmetrics.",
        gt=0,
    )
    floor_at_zero: bool = option(
        False, "Score max(cos, 0) before scaling, as CLIPScore and torchmetrics do."
    )


class ClipScore(ClipFamilyReward):
    """Text-image alignment: cosine similarity in an open_clip model's embedding space."""

    name = "clip-score"
    config_class = ClipScoreConfig
    components = ("clip_score",)

    def __init__(self, config: ClipScoreConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        tag_cfg = pretrained_config(config.model, config.pretrained, "rewards.clip-score.model")
        hub = hub_files(tag_cfg)
        repo = next(iter(hub), "")
        how = (
            f"download open_clip_model.safetensors from https://huggingface.co/{repo}"
            if repo
            else "point at an open_clip weights file for this architecture"
        )
        checkpoint = resolve_file(
            config.checkpoint,
            what=f"open_clip weights for {config.model}/{config.pretrained or 'no tag'}",
            option="rewards.clip-score.checkpoint",
            how_to_get=how,
            hub=hub,
        )
        self.clip = build_open_clip(
            config.model,
            config.pretrained,
            checkpoint,
            runtime,
            "CLIP-score weights",
            "rewards.clip-score.model",
        )
        self.transform = open_clip_transform(self.clip.preprocess_cfg)

    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        image_features = self.clip.image_features(preprocess(images, self.transform))
        distinct, index = unique(texts)
        text_features = self.clip.text_features(distinct)[index.to(image_features.device)]
        cosine = (image_features * text_features).sum(dim=-1)
        if self.config.floor_at_zero:
            cosine = cosine.clamp(min=0.0)
        return self.config.scale * cosine
