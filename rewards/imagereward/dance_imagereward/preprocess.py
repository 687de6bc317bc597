"""ImageReward's image preprocessing, on batched tensors.

ImageReward (``ImageReward/ImageReward.py``, ``_transform(224)``) runs torchvision on a PIL image:
``Resize(224, BICUBIC)`` (shorter side to 224, longer side ``int(224 * long / short)``),
``CenterCrop(224)`` (offsets ``round((size - 224) / 2)``), ``ToTensor`` and ``Normalize`` with
CLIP's mean and std. Here the same steps run on ``[N, 3, H, W]`` pixels in [0, 1]:

* Pillow's bicubic resize is a separable convolution (Keys kernel, a = -0.5, widened by the scale
  when shrinking), horizontal pass first, each pass clipped to the 8-bit range. torch's
  ``interpolate(mode="bicubic", antialias=True)`` computes the same kernel, so this module runs
  the two passes one after the other and clamps each to [0, 1].
* Pillow also rounds each pass to 8 bits; this module does not, so that the score stays
  differentiable. The two agree within about 1/255 per pixel (the tests check 1.5/255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# CLIP's normalisation constants, as ImageReward's Normalize uses them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` output for an ``height x width`` image: shorter side
    ``size``, longer side ``int(size * long / short)`` (truncated)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _bicubic_pass(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(
        images, size=(height, width), mode="bicubic", antialias=True, align_corners=False
    )
    return out.clamp(0.0, 1.0)


def resize_bicubic(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's bicubic resize of ``[N, C, H, W]`` pixels in [0, 1] (without its 8-bit rounding):
    the horizontal pass, then the vertical one, each clipped to [0, 1]."""
    images = _bicubic_pass(images, images.shape[-2], width)
    return _bicubic_pass(images, height, width)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``CenterCrop(size)`` for images at least ``size`` on each side."""
    height, width = images.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ImageReward's input for ``[N, 3, H, W]`` pixels in [0, 1]: fp32 ``[N, 3, size, size]``.

    Pixels outside [0, 1] are clamped first, as converting to an 8-bit PIL image would.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
    images = images.float().clamp(0.0, 1.0)
    height, width = resized_size(images.shape[-2], images.shape[-1], size)
    images = center_crop(resize_bicubic(images, height, width), size)
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std
