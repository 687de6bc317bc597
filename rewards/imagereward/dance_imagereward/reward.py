"""The ``imagereward`` reward: ImageReward v1.0 (Xu et al. 2023, THUDM/ImageReward), a BLIP model
fine-tuned on human preference rankings of text-to-image outputs.

Scores follow ``ImageReward.score(prompt, image)``: preprocessing (:mod:`.preprocess`),
tokenisation (:mod:`.tokenizer`) and the network (:mod:`.model`), batched on tensors. A video scores
as the mean over uniformly spaced frames (:mod:`dance.video.frames`). An image with a non-finite
pixel scores NaN, so the trainer leaves it out instead of learning from a made-up value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.errors import ConfigError, ModelLayoutError
from dance.interfaces import Prompt, Reward, RewardOutput, Runtime
from dance.video.frames import frames_for_image_reward, mean_over_frames
from dance_imagereward.layout import DEFAULT_REPO, find_checkpoint, find_med_config
from dance_imagereward.model import load_model
from dance_imagereward.preprocess import preprocess
from dance_imagereward.tokenizer import DEFAULT_TOKENIZER, MAX_LENGTH, load_tokenizer, tokenize


@dataclass
class ImageRewardConfig:
    model: str = option(
        DEFAULT_REPO,
        "ImageReward checkpoint: ImageReward.pt (or a .safetensors with its keys), a directory "
        "holding it, or a Hub repo id in the local Hugging Face cache.",
    )
    med_config: str | None = option(
        None, "BLIP's med_config.json; by default the one next to the checkpoint."
    )
    tokenizer: str = option(
        DEFAULT_TOKENIZER,
        "bert-base-uncased tokenizer: a directory or a Hub repo id in the local cache.",
    )
    max_length: int = option(
        MAX_LENGTH, "Prompt length in tokens, [CLS] and [SEP] included (ImageReward: 35).", ge=3
    )
    batch_size: int = option(32, "Images per forward pass.", ge=1)
    video_frames: int = option(
        8, "Videos score as the mean over this many uniformly spaced frames.", ge=1
    )
    differentiable: bool = option(
        False, "Keep the graph from pixels to score (for reward backpropagation)."
    )


class ImageReward(Reward):
    """ImageReward v1.0: human preference for an image given its prompt (higher is better)."""

    name = "imagereward"
    config_class = ImageRewardConfig
    modalities = ("image", "video")
    differentiable = True  # when the config asks for it: see is_differentiable
    components = ("imagereward",)

    def __init__(self, config: ImageRewardConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        checkpoint = find_checkpoint(config.model)
        med_config = find_med_config(checkpoint, config.med_config)
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.model = load_model(checkpoint, med_config).to_runtime(
            runtime.device, runtime.frozen_dtype
        )
        positions = self.model.text.config.max_position_embeddings
        vocab = self.model.text.config.vocab_size
        if config.max_length > positions:
            raise ConfigError(
                f"imagereward: max_length {config.max_length} exceeds the text encoder's "
                f"{positions} positions"
            )
        if len(self.tokenizer) > vocab:
            raise ModelLayoutError(
                f"tokenizer '{config.tokenizer}' has {len(self.tokenizer)} tokens, more than the "
                f"{vocab} embeddings of {checkpoint}"
            )

    def is_differentiable(self) -> bool:
        """Only an instance built with ``differentiable=true`` keeps the graph."""
        return bool(self.config.differentiable)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        batch = media.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
        if batch == 0:
            return {self.components[0]: torch.zeros(0, device=media.device)}
        images, per_sample = frames_for_image_reward(media, self.config.video_frames)
        if images.shape[1] != 3:
            raise ValueError(f"expected RGB media (3 channels), got shape {tuple(media.shape)}")
        texts = [p.text for p in prompts for _ in range(per_sample)]  # sample-major, as frames
        with torch.set_grad_enabled(self.is_differentiable() and torch.is_grad_enabled()):
            scores = self.score_images(images, texts)
        return {self.components[0]: mean_over_frames(scores, batch).to(media.device)}

    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """ImageReward scores ``[N]`` (fp32, runtime device) of ``[N, 3, H, W]`` pixels in [0, 1]
        for ``texts``; NaN for an image with a non-finite pixel."""
        device = self.runtime.device
        images = images.to(device=device, dtype=torch.float32)
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        # Zeros in place of non-finite pixels keep them from reaching the network at all.
        images = torch.where(torch.isfinite(images), images, torch.zeros((), device=device))
        input_ids, attention_mask = tokenize(self.tokenizer, texts, self.config.max_length)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        size = self.model.image_size
        step = self.config.batch_size
        scores = [
            self.model(
                preprocess(images[i : i + step], size),
                input_ids[i : i + step],
                attention_mask[i : i + step],
            )
            for i in range(0, images.shape[0], step)
        ]
        out = torch.cat(scores).float()
        return torch.where(finite, out, torch.full_like(out, float("nan")))
