"""Conditioning images: fitting them to the video size, a content key for the cache, PIL form."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F


def fit_image(image: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """``[C, H, W]`` pixels in [0, 1] -> ``[1, 3, height, width]`` in [-1, 1], the VAE's input.

    ``stretch``: resize to the frame without keeping the aspect ratio, nearest neighbour, as the
    pipeline's ``video_processor.preprocess`` does for tensor images. ``crop``: scale (bilinear,
    antialiased) until the image covers the frame, then cut the centre out."""
    pixels = image.float().unsqueeze(0)
    if pixels.shape[1] == 1:
        pixels = pixels.repeat(1, 3, 1, 1)
    src_h, src_w = pixels.shape[-2:]
    if (src_h, src_w) != (height, width):
        if mode == "stretch":
            pixels = F.interpolate(pixels, size=(height, width))
        else:
            cover = max(height / src_h, width / src_w)
            # The scaled size, never below the frame (rounding must not leave a gap).
            new_h = max(height, round(src_h * cover))
            new_w = max(width, round(src_w * cover))
            pixels = F.interpolate(
                pixels, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
            )
            top, left = (new_h - height) // 2, (new_w - width) // 2
            pixels = pixels[:, :, top : top + height, left : left + width]
    return pixels.clamp(0, 1) * 2 - 1


def image_key(image: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """Shape and content hash of an image: the key of the condition cache."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    return tuple(data.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest()


def to_pil(image: torch.Tensor) -> Any:
    """``[C, H, W]`` in [0, 1] -> an RGB PIL image (8 bits), what the pipeline's CLIP image
    processor is usually given."""
    from PIL import Image

    pixels = image.detach().float().cpu().clamp(0, 1)
    if pixels.shape[0] == 1:
        pixels = pixels.repeat(3, 1, 1)
    array = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)  # [H, W, 3] uint8: RGB
