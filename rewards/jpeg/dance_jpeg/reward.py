"""JPEG file-size rewards, following DDPO (Black et al. 2023, ``ddpo_pytorch/rewards.py``,
``jpeg_incompressibility`` and ``jpeg_compressibility``).

DDPO converts pixels in [0, 1] to uint8 with ``(x * 255).round().clamp(0, 255)``, saves each image
with Pillow as a JPEG at quality 95 and takes the file size in kB (bytes / 1000). Incompressibility
rewards that size; compressibility rewards minus it. Videos score as the mean over uniformly spaced
frames (:mod:`dance.video.frames`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from dance.config import option
from dance.interfaces import Prompt, Reward, RewardOutput
from dance.video.frames import frames_for_image_reward, mean_over_frames


@dataclass
class JpegConfig:
    quality: int = option(95, "JPEG quality Pillow encodes at (DDPO uses 95).", ge=1, le=100)
    video_frames: int = option(
        8, "Videos score as the mean over this many uniformly spaced frames.", ge=1
    )


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """DDPO's conversion of pixels in [0, 1] to uint8: ``(x * 255).round().clamp(0, 255)``.

    Computed in fp32 (bf16 cannot hold ``x * 255`` exactly, which would move pixels by a level);
    ``round`` is half to even, as in DDPO. Out-of-range values clamp; NaN is undefined.
    """
    return (pixels.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)


def jpeg_sizes_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG size in kB (bytes / 1000) of each image in ``[N, C, H, W]`` pixels in [0, 1].

    ``C`` is 3 (RGB) or 1 (grayscale). Returns fp32 ``[N]`` on the images' device. An image with
    a non-finite pixel gets NaN: converting NaN to uint8 is undefined, and a made-up size would
    hide the broken sample from the trainer.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images [N, 1 or 3, H, W] in [0, 1], got shape {tuple(images.shape)}"
        )
    with torch.no_grad():
        finite = torch.isfinite(images).flatten(1).all(dim=1).cpu()
        data = to_uint8(images.nan_to_num(0.0))
        data = data.permute(0, 2, 3, 1).cpu().numpy()  # one transfer, then NHWC for Pillow
    sizes = []
    for array, ok in zip(data, finite.tolist(), strict=True):
        if not ok:
            sizes.append(float("nan"))
            continue
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float64).to(device=images.device, dtype=torch.float32)


class _JpegSize(Reward):
    config_class = JpegConfig
    modalities = ("image", "video")
    differentiable = False
    sign: float

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        images, _ = frames_for_image_reward(media, self.config.video_frames)
        sizes = jpeg_sizes_kb(images, self.config.quality)
        return {self.components[0]: self.sign * mean_over_frames(sizes, media.shape[0])}


class JpegIncompressibility(_JpegSize):
    """The JPEG size in kB: larger, more detailed images score higher (DDPO)."""

    name = "jpeg-incompressibility"
    components = ("incompressibility",)
    sign = 1.0


class JpegCompressibility(_JpegSize):
    """Minus the JPEG size in kB: smaller, simpler images score higher (DDPO)."""

    name = "jpeg-compressibility"
    components = ("compressibility",)
    sign = -1.0
