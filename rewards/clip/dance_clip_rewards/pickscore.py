"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"), as the PickScore repository defines it.

PickScore_v1 is a CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences, loaded with transformers'
``CLIPModel`` (weights ``yuvalkirstain/PickScore_v1``) and preprocessed with the ``CLIPProcessor``
of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest side 224 bicubic, center crop, CLIP
mean/std; text padded and truncated to 77 tokens). The score is
``logit_scale.exp() * cos(image_embedding, text_embedding)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dance.config import option
from dance.errors import ModelLayoutError
from dance.files import first_line
from dance.interfaces import Runtime
from dance.models.model_layout import check_component_files, load_pretrained
from dance_clip_rewards.base import ClipFamilyReward, ClipRewardOptions, unique
from dance_clip_rewards.preprocess import clip_processor_transform, preprocess

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class PickScoreConfig(ClipRewardOptions):
    model: str = option(
        MODEL_REPO,
        "PickScore weights: a local save_pretrained directory or a Hugging Face repo id "
        "already in the local cache.",
    )
    processor: str = option(
        PROCESSOR_REPO,
        "CLIPProcessor (image processor and tokenizer): a local directory or a cached repo id.",
    )


def _load(
    loader: Any, source: str, what: str, option_name: str, model: bool = False, **kwargs: Any
) -> Any:
    """``loader.from_pretrained`` of a local directory or a repo id in the local Hugging Face
    cache, never downloading, with one-line errors: a source that is not there says where to get
    it; a damaged file is named (a FileFault); a ``model`` with weights missing or not finite is
    refused (:func:`dance.models.model_layout.load_pretrained`)."""
    local = Path(source).expanduser()
    folder = local if local.is_dir() else _cached_folder(source)
    if folder is None:
        raise ModelLayoutError(
            f"{what} not found at '{source}' (a local directory or a repo id in the Hugging "
            f"Face cache); download it with `huggingface-cli download {source}` or set "
            f"{option_name}=DIR."
        )
    if model:
        return load_pretrained(loader, folder, **kwargs)
    check_component_files(folder)
    try:
        return loader.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLayoutError(
            f"{what} in '{folder}' is incomplete ({first_line(exc)}); download it again or set"
            f" {option_name}=DIR."
        ) from None


def _cached_folder(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache, or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not a repo id, or not cached: both mean "not here"
        return None


def _pooled(output: Any) -> torch.Tensor:
    """Projected features: a tensor in transformers 4, ``pooler_output`` in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScore(ClipFamilyReward):
    """PickScore: ``logit_scale.exp()`` times the cosine of PickScore's CLIP embeddings."""

    name = "pickscore"
    config_class = PickScoreConfig
    components = ("pickscore",)

    def __init__(self, config: PickScoreConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        from transformers import CLIPModel, CLIPProcessor

        self.processor = _load(
            CLIPProcessor, config.processor, "CLIP processor", "rewards.pickscore.processor"
        )
        model = _load(
            CLIPModel, config.model, "PickScore weights", "rewards.pickscore.model", model=True
        )
        # exp(logit_scale) read before the cast: ln(100) = 4.6052 in bf16 is 4.59375, which
        # would scale every score by 0.989.
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.model = model.eval().requires_grad_(False)
        self.model.to(device=runtime.device, dtype=runtime.frozen_dtype)
        self.transform = clip_processor_transform(self.processor.image_processor)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        device, dtype = self.runtime.device, self.runtime.frozen_dtype
        pixels = preprocess(images, self.transform).to(device, dtype)
        image_features = _pooled(self.model.get_image_features(pixel_values=pixels)).float()
        distinct, index = unique(texts)
        # Padding to the full context keeps a text's tokens the same in any batch; CLIP's causal
        # mask and end-of-text pooling make the result equal to PickScore's padding=True.
        tokens = self.processor.tokenizer(
            distinct,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        text_features = _pooled(self.model.get_text_features(**tokens)).float()
        text_features = text_features[index.to(image_features.device)]
        cosine = (F.normalize(image_features, dim=-1) * F.normalize(text_features, dim=-1)).sum(-1)
        return self.logit_scale * cosine
