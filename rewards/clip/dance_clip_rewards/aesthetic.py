"""LAION aesthetic predictor v2 (Schuhmann, christophschuhmann/improved-aesthetic-predictor).

The predictor embeds an image with OpenAI's CLIP ViT-L/14 (``encode_image``, CLIP's
preprocessing: shortest side to 224, bicubic, center crop, CLIP mean/std), L2-normalises the
embedding and feeds it, in fp32, to a small MLP trained to regress aesthetic ratings (about 1 to
10). The released head ``sac+logos+ava1-l14-linearMSE.pth`` is a state dict of
``layers = Sequential(Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64),
Dropout, Linear(64, 16), Linear(16, 1))`` with no activations ("linear"): keys
``layers.{0,2,4,6,7}.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dance.config import option
from dance.errors import ModelLayoutError
from dance.interfaces import Runtime
from dance_clip_rewards.base import ClipFamilyReward, ClipRewardOptions
from dance_clip_rewards.openclip import build_open_clip, hub_files, pretrained_config
from dance_clip_rewards.preprocess import open_clip_transform, preprocess
from dance_clip_rewards.weights import load_into, load_state_dict, resolve_file

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"


class AestheticHead(nn.Module):
    """The predictor's MLP, laid out as the released file (dropout is inactive in eval)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


@dataclass
class AestheticConfig(ClipRewardOptions):
    head: str = option("", f"Path to the MLP head {HEAD_FILE} (from {HEAD_URL}).")
    clip_model: str = option("ViT-L-14", "open_clip architecture of the CLIP image encoder.")
    clip_pretrained: str = option(
        "openai",
        "open_clip pretrained tag of the CLIP weights (sets QuickGELU, preprocessing and the "
        "Hugging Face repository to look in).",
    )
    clip_checkpoint: str = option(
        "",
        "open_clip weights file of the CLIP model. Empty: the tag's Hugging Face repository "
        "(timm/vit_large_patch14_clip_224.openai for openai) in the local cache.",
    )


class LaionAesthetic(ClipFamilyReward):
    """LAION aesthetic predictor v2: an MLP on the normalised CLIP ViT-L/14 image embedding.

    The prompt is not used."""

    name = "laion-aesthetic"
    config_class = AestheticConfig
    components = ("aesthetic",)

    def __init__(self, config: AestheticConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        option = "rewards.laion-aesthetic.clip_model"
        tag_cfg = pretrained_config(config.clip_model, config.clip_pretrained, option)
        head_path = resolve_file(
            config.head,
            what=f"aesthetic MLP head {HEAD_FILE}",
            option="rewards.laion-aesthetic.head",
            how_to_get=f"download {HEAD_FILE} from {HEAD_URL}",
        )
        hub = hub_files(tag_cfg)
        clip_path = resolve_file(
            config.clip_checkpoint,
            what=f"open_clip weights for {config.clip_model}/{config.clip_pretrained or 'no tag'}",
            option="rewards.laion-aesthetic.clip_checkpoint",
            how_to_get="download open_clip_model.safetensors from https://huggingface.co/"
            + (next(iter(hub), "") or "the model's open_clip repository"),
            hub=hub,
        )
        self.clip = build_open_clip(
            config.clip_model,
            config.clip_pretrained,
            clip_path,
            runtime,
            "aesthetic CLIP weights",
            option,
        )
        self.transform = open_clip_transform(self.clip.preprocess_cfg)
        state = load_state_dict(head_path, "aesthetic MLP head")
        first = state.get("layers.0.weight")
        if first is None or first.ndim != 2:
            raise ModelLayoutError(
                f"aesthetic MLP head '{head_path}' has no 'layers.0.weight' matrix; expected the "
                f"layout of {HEAD_FILE}."
            )
        embed_dim = self.clip.model.visual.output_dim
        if first.shape[1] != embed_dim:
            raise ModelLayoutError(
                f"aesthetic MLP head '{head_path}' takes {first.shape[1]}-dim embeddings but "
                f"{config.clip_model} gives {embed_dim}; use the head trained on that CLIP model."
            )
        self.head = AestheticHead(embed_dim)
        load_into(self.head, state, f"aesthetic MLP head '{head_path}'")
        # The head is tiny and the reference runs it in fp32: keep it there on every device.
        self.head.eval().requires_grad_(False).to(runtime.device, torch.float32)

    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        embeddings = self.clip.image_features(preprocess(images, self.transform))
        return self.head(embeddings).squeeze(-1)
