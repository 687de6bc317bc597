"""Image preprocessing of CLIP-family reward models, done on tensors, batched, on any device.

The published models preprocess one PIL image at a time; here a batch of pixels in [0, 1]
(``[N, 3, H, W]``) goes through the same geometric steps on the reward's device:

* ``shortest``: resize the shortest side to the model's size, keeping the aspect ratio, then
  center-crop (open_clip's and CLIP's default; transformers' CLIPImageProcessor);
* ``longest``: resize the longest side to the model's size, then zero-pad to a square, centred
  (HPS-v2's ``ResizeMaxSize``; open_clip's ``resize_mode="longest"``);
* ``squash``: resize both sides to the model's size, ignoring the aspect ratio (open_clip's
  ``resize_mode="squash"``, the setting of Apple's DFN checkpoints);

then normalise with the model's mean and std. Output sizes and crop offsets follow the reference
implementations exactly (torchvision's ``Resize`` truncates the long side, ``CenterCrop`` rounds
the offset half to even, transformers floors it, HPS rounds both sides). Resampling is
``torch.nn.functional.interpolate`` with ``antialias=True``, which is what torchvision does to a
tensor; on PIL images (open_clip, transformers' slow processor) Pillow's bicubic filter differs
slightly (see tests/rewards/clip/test_preprocess.py for the measured difference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

ResizeMode = Literal["shortest", "longest", "squash"]
# open_clip's default normalisation (OpenAI CLIP's dataset statistics).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Everything that defines a model's preprocessing of one image."""

    size: tuple[int, int]  # (height, width) the model takes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: ResizeMode = "shortest"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    # Value of padded pixels, in [0, 1] pixel space before normalisation (HPS and open_clip: 0).
    fill: float = 0.0
    # Crop offset (size difference / 2): torchvision's CenterCrop rounds it (half to even),
    # transformers' CLIPImageProcessor floors it.
    crop_offset: Literal["round", "floor"] = "round"
    # Clamp to [0, 1] after resampling: PIL and uint8 pipelines (open_clip, transformers) do it
    # implicitly; HPS resamples the float tensor and does not.
    clamp_resized: bool = True

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unknown resize mode {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def resized_size(height: int, width: int, transform: ImageTransform) -> tuple[int, int]:
    """The (height, width) an image is resampled to before cropping or padding."""
    target_h, target_w = transform.size
    if transform.resize_mode == "squash":
        return target_h, target_w
    if transform.resize_mode == "longest":
        if target_h == target_w:
            # HPS's ResizeMaxSize: both sides times size / longest side, rounded.
            scale = target_h / max(height, width)
            return round(height * scale), round(width * scale)
        ratio = max(height / target_h, width / target_w)  # open_clip's ResizeKeepRatio(longest=1)
        return round(height / ratio), round(width / ratio)
    if target_h == target_w:
        # torchvision's Resize(int) and transformers' shortest_edge: the short side becomes the
        # size, the long side is truncated.
        if height <= width:
            return target_h, int(target_h * width / height)
        return int(target_w * height / width), target_w
    ratio = min(height / target_h, width / target_w)  # open_clip's ResizeKeepRatio(longest=0)
    return round(height / ratio), round(width / ratio)


def _offset(excess: int, rule: str) -> int:
    return excess // 2 if rule == "floor" else int(round(excess / 2.0))


def _crop_or_pad(images: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Center-crop what is too large and centre-pad what is too small (pad: left/top get half
    the difference rounded down, as HPS and open_clip place it)."""
    target_h, target_w = transform.size
    height, width = images.shape[-2:]
    pad_h, pad_w = max(target_h - height, 0), max(target_w - width, 0)
    if pad_h or pad_w:
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        images = F.pad(images, padding, value=transform.fill)
        height, width = images.shape[-2:]
    if (height, width) != (target_h, target_w):
        top = _offset(height - target_h, transform.crop_offset)
        left = _offset(width - target_w, transform.crop_offset)
        images = images[..., top : top + target_h, left : left + target_w]
    return images


def preprocess(images: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Model input ``[N, 3, h, w]`` (fp32) from pixels ``[N, 3, H, W]`` in [0, 1].

    Pixels outside [0, 1] are clamped first, as saving the image would. Differentiable.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
    x = images.float().clamp(0.0, 1.0)
    new_size = resized_size(x.shape[-2], x.shape[-1], transform)
    if new_size != tuple(x.shape[-2:]):
        x = F.interpolate(
            x, size=new_size, mode=transform.interpolation, align_corners=False, antialias=True
        )
        if transform.clamp_resized:
            x = x.clamp(0.0, 1.0)
    x = _crop_or_pad(x, transform)
    mean = torch.tensor(transform.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def open_clip_transform(
    preprocess_cfg: Mapping[str, Any], resize_mode: ResizeMode | None = None
) -> ImageTransform:
    """The transform of an open_clip model from its preprocess config
    (``open_clip.get_model_preprocess_cfg(model)``: size, mean, std, interpolation, resize_mode,
    fill_color), as open_clip's ``image_transform(is_train=False)`` applies it."""
    mode = resize_mode or preprocess_cfg.get("resize_mode") or "shortest"
    interpolation = preprocess_cfg.get("interpolation") or "bicubic"
    # open_clip treats "random" as bicubic at inference.
    interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
    return ImageTransform(
        size=_pair(preprocess_cfg["size"]),
        mean=tuple(preprocess_cfg.get("mean") or OPENAI_MEAN),
        std=tuple(preprocess_cfg.get("std") or OPENAI_STD),
        resize_mode=mode,
        interpolation=interpolation,
        fill=float(preprocess_cfg.get("fill_color") or 0) / 255.0,
        crop_offset="round",
        clamp_resized=True,
    )


def hps_transform(preprocess_cfg: Mapping[str, Any]) -> ImageTransform:
    """HPS-v2's evaluation transform (``image_transform(..., resize_longest_max=True)`` in the
    HPSv2 repository): ToTensor, resize the longest side to the model's size with bicubic on
    the float tensor, zero-pad to a square (left/top get half the padding rounded down), then
    normalise with the model's mean and std. Padding is black: the fill 0 is applied before
    normalisation. HPS skips the pad when no resize is needed; here the output is always square.
    """
    base = open_clip_transform(preprocess_cfg, resize_mode="longest")
    return ImageTransform(
        size=base.size,
        mean=base.mean,
        std=base.std,
        resize_mode="longest",
        interpolation="bicubic",
        fill=0.0,
        crop_offset="round",
        clamp_resized=False,
    )


def clip_processor_transform(image_processor: Any) -> ImageTransform:
    """The transform of a transformers ``CLIPImageProcessor`` (resize ``shortest_edge`` with its
    resample filter, center-crop ``crop_size`` with a floored offset, rescale, normalise)."""
    size = dict(image_processor.size)
    crop = dict(image_processor.crop_size) if image_processor.do_center_crop else None
    if not image_processor.do_resize:
        raise ValueError("a CLIP image processor with do_resize=False is not supported")
    if size.get("shortest_edge"):
        mode: ResizeMode = "shortest"
        edge = int(size["shortest_edge"])
        target = (int(crop["height"]), int(crop["width"])) if crop else (edge, edge)
        if crop and target != (edge, edge):
            raise ValueError(f"crop_size {crop} differs from shortest_edge {edge}")
    else:
        mode = "squash"
        target = (int(size["height"]), int(size["width"]))
    if image_processor.do_rescale and abs(image_processor.rescale_factor - 1 / 255) > 1e-12:
        raise ValueError(f"unsupported rescale_factor {image_processor.rescale_factor} (1/255)")
    resample = int(getattr(image_processor, "resample", 3))
    if resample not in (2, 3):  # PIL: 2 bilinear, 3 bicubic
        raise ValueError(f"unsupported resample filter {resample} (bilinear or bicubic only)")
    mean = image_processor.image_mean if image_processor.do_normalize else (0.0, 0.0, 0.0)
    std = image_processor.image_std if image_processor.do_normalize else (1.0, 1.0, 1.0)
    return ImageTransform(
        size=target,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        resize_mode=mode,
        interpolation="bicubic" if resample == 3 else "bilinear",
        crop_offset="floor",
        clamp_resized=True,
    )
