"""What the CLIP-family rewards share: options, the frame rule, batching, NaN and gradients.

Each reward implements :meth:`ClipFamilyReward.score_images` for a chunk of images (pixels in
[0, 1] on the reward's device) and their prompt texts; :meth:`ClipFamilyReward.score` does the rest:

* videos score as the mean over uniformly spaced frames (:mod:`dance.video.frames`);
* images run through the model ``batch_size`` at a time;
* an image with a non-finite pixel scores NaN (never a made-up value), without touching the
  other images of the batch: the trainer leaves NaN samples out or stops, as configured;
* everything runs under ``torch.no_grad()`` unless the instance was built with
  ``differentiable=true``; then its ``is_differentiable()`` says so and gradients flow back to
  the pixels (the weights stay frozen).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.interfaces import Prompt, Reward, RewardOutput
from dance.video.frames import frames_for_image_reward, mean_over_frames


@dataclass
class ClipRewardOptions:
    """Options every CLIP-family reward has."""

    batch_size: int = option(32, "Images per model forward (video frames count as images).", ge=1)
    video_frames: int = option(
        8, "Videos score as the mean over this many uniformly spaced frames.", ge=1
    )
    differentiable: bool = option(
        False,
        "Keep the autograd graph from pixels to score (frozen weights) instead of scoring "
        "under torch.no_grad().",
    )


def unique(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct texts in first-seen order and, for every text, the index of its copy.

    A GRPO batch repeats each prompt group-size times: its text is encoded once.
    """
    position: dict[str, int] = {}
    index = [position.setdefault(text, len(position)) for text in texts]
    return list(position), torch.tensor(index, dtype=torch.long)


class ClipFamilyReward(Reward):
    """Base of the CLIP-family rewards; subclasses set ``name``, ``config_class``,
    ``components`` and implement :meth:`score_images`."""

    modalities = ("image", "video")
    differentiable = True  # when the config asks for it: see is_differentiable

    def is_differentiable(self) -> bool:
        """Only an instance built with ``differentiable=true`` keeps the graph."""
        return bool(self.config.differentiable)

    @abstractmethod
    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[N]`` of images ``[N, 3, H, W]`` (finite, in [0, 1], fp32, on the runtime's
        device) against their ``texts``."""

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        batch = media.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
        if batch == 0:
            return {name: torch.zeros(0, device=media.device) for name in self.components}
        images, per_sample = frames_for_image_reward(media, self.config.video_frames)
        if images.shape[1] != 3:
            raise ValueError(f"expected RGB media (3 channels), got shape {tuple(media.shape)}")
        texts = [p.text for p in prompts for _ in range(per_sample)]  # sample-major, as frames
        grad = contextlib.nullcontext() if self.is_differentiable() else torch.no_grad()
        with grad:
            pixels = images.to(self.runtime.device, torch.float32)
            finite = torch.isfinite(pixels).flatten(1).all(dim=1)
            pixels = torch.where(finite[:, None, None, None], pixels, torch.zeros_like(pixels))
            step = self.config.batch_size
            chunks = [
                self.score_images(pixels[i : i + step], texts[i : i + step]).float()
                for i in range(0, pixels.shape[0], step)
            ]
            scores = torch.cat(chunks)
            scores = torch.where(finite, scores, torch.full_like(scores, float("nan")))
            scores = mean_over_frames(scores, batch)
        return {self.components[0]: scores.to(media.device)}
