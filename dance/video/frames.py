"""Helpers for rewards that score media: the frame rule that lets an image reward score videos.

Media handed to rewards are pixels in [0, 1]: ``[B, C, H, W]`` for images and ``[B, C, F, H, W]``
for videos (see :mod:`dance.interfaces`).

The frame rule. An image reward scores a video as the mean of its scores on ``F_s`` uniformly
spaced frames, ``F_s = min(num_frames, F)``, at frame indices

    ``torch.linspace(0, F - 1, F_s).round()``

(computed in float64; ``round`` is torch's, half to even). The first and last frames are always
included when ``F_s >= 2``; ``F_s = 1`` takes the first frame; ``num_frames >= F`` takes every
frame. A NaN score on any chosen frame makes the video's score NaN, so a failed frame is never
averaged away. Every image reward that accepts videos should use these two functions so that
rewards agree on what "the score of a video" means::

    images, per_video = frames_for_image_reward(media, config.video_frames)
    scores = score_images(images)  # [B * F_s]
    scores = mean_over_frames(scores, media.shape[0])  # [B]
"""

from __future__ import annotations

import torch

from dance.interfaces import Modality


def modality_of(media: torch.Tensor) -> Modality:
    """``"image"`` for ``[B, C, H, W]`` media, ``"video"`` for ``[B, C, F, H, W]``."""
    if media.ndim == 4:
        return "image"
    if media.ndim == 5:
        return "video"
    raise ValueError(
        "media must be [B, C, H, W] (image) or [B, C, F, H, W] (video), "
        f"got shape {tuple(media.shape)}"
    )


def frame_indices(
    num_available: int, num_frames: int, device: torch.device | None = None
) -> torch.Tensor:
    """Indices (int64) of ``min(num_frames, num_available)`` uniformly spaced frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_available < 1:
        raise ValueError(f"a video needs at least one frame, got {num_available}")
    count = min(num_frames, num_available)
    # float64 so that ties such as 3.5 land exactly on .5 and round the same way on every device.
    positions = torch.linspace(0, num_available - 1, count, dtype=torch.float64)
    return positions.round().to(device=device, dtype=torch.long)


def frames_for_image_reward(media: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, int]:
    """Turn media into a batch of images for an image reward.

    Images ``[B, C, H, W]`` pass through unchanged with ``F_s = 1``. Videos ``[B, C, F, H, W]``
    become ``[B * F_s, C, H, W]``, sample-major (row ``b * F_s + j`` is frame ``j`` of video
    ``b``), with the frames chosen by the rule in the module docstring. Returns the images and
    ``F_s``; pass the scores to :func:`mean_over_frames`.
    """
    if modality_of(media) == "image":
        return media, 1
    batch, channels, frames, height, width = media.shape
    index = frame_indices(frames, num_frames, media.device)
    chosen = media.index_select(2, index)  # [B, C, F_s, H, W]
    images = chosen.transpose(1, 2).reshape(batch * index.numel(), channels, height, width)
    return images, index.numel()


def mean_over_frames(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """Average per-frame scores ``[B * F_s]`` (sample-major) into one score per video ``[B]``.

    Image scores (``F_s = 1``) come back unchanged. NaN on any frame gives NaN for that video.
    """
    if batch == 0 and scores.shape == (0,):
        return scores
    if scores.ndim != 1 or batch < 1 or scores.shape[0] % batch != 0:
        raise ValueError(
            f"expected scores [B * F_s] for a batch of {batch}, got shape {tuple(scores.shape)}"
        )
    return scores.reshape(batch, -1).mean(dim=1)
