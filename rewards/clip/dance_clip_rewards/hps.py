"""HPS-v2.1 (Wu et al. 2023, "Human Preference Score v2"), as the HPSv2 repository scores it.

HPS-v2.1 is an open_clip ViT-H-14 fine-tuned on human preferences, released as
``HPS_v2.1_compressed.pt`` (a dict whose ``"state_dict"`` holds the whole CLIP model). HPSv2's
``img_score.score`` takes the L2-normalised image and text embeddings of the model
(``output_dict=True`` features) and returns their dot product: the cosine similarity, without the
logit scale. Its evaluation transform resizes the longest side to 224 (bicubic), zero-pads to a
square and normalises with CLIP's mean and std
(:func:`dance_clip_rewards.preprocess.hps_transform`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dance.config import option
from dance.interfaces import Runtime
from dance_clip_rewards.base import ClipFamilyReward, ClipRewardOptions, unique
from dance_clip_rewards.openclip import build_open_clip, pretrained_config
from dance_clip_rewards.preprocess import hps_transform, preprocess
from dance_clip_rewards.weights import resolve_file

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
HOW_TO_GET = (
    f"download {HPS_FILE} from https://huggingface.co/{HPS_REPO} "
    f"(huggingface-cli download {HPS_REPO} {HPS_FILE})"
)


@dataclass
class HpsConfig(ClipRewardOptions):
    checkpoint: str = option(
        "",
        f"Path to {HPS_FILE} (a torch file holding {{'state_dict': ...}}, or .safetensors). "
        f"Empty: the Hugging Face cache ({HPS_REPO}), then ~/.cache/hpsv2/.",
    )
    model: str = option(
        "ViT-H-14",
        "open_clip architecture of the checkpoint (built with pretrained=None, then the "
        "checkpoint's weights are loaded).",
    )


class HpsReward(ClipFamilyReward):
    """HPS-v2.1: cosine similarity of image and prompt in the HPS-tuned CLIP space."""

    name = "hps"
    config_class = HpsConfig
    components = ("hps",)

    def __init__(self, config: HpsConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        pretrained_config(
            config.model, "", "rewards.hps.model"
        )  # unknown architecture: fail before the file search
        checkpoint = resolve_file(
            config.checkpoint,
            what=f"HPS-v2.1 checkpoint {HPS_FILE}",
            option="rewards.hps.checkpoint",
            how_to_get=HOW_TO_GET,
            hub={HPS_REPO: (HPS_FILE,)},
            fallbacks=(Path("~/.cache/hpsv2") / HPS_FILE,),
        )
        self.clip = build_open_clip(
            config.model, "", checkpoint, runtime, "HPS-v2.1 checkpoint", "rewards.hps.model"
        )
        self.transform = hps_transform(self.clip.preprocess_cfg)

    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        image_features = self.clip.image_features(preprocess(images, self.transform))
        distinct, index = unique(texts)
        text_features = self.clip.text_features(distinct)[index.to(image_features.device)]
        return (image_features * text_features).sum(dim=-1)
