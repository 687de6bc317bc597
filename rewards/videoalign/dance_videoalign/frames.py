"""Video preprocessing for VideoAlign, from tensors in memory.

VideoAlign reads an MP4 with qwen-vl-utils (its ``vision_process.py``) and hands the frames to the
Qwen2-VL processor. This module reproduces that path on decoded pixels ``[B, 3, F, H, W]`` in
[0, 1], without writing a file:

1. Quantise to uint8, ``(x * 255).round().clamp(0, 255)``: the reward model was trained on decoded
   8-bit video. (DanceGRPO's MP4 round trip truncates instead and adds H.264 loss; neither is
   reproduced: rounding is the nearest 8-bit picture of what the policy made.)
2. Choose frames (``smart_nframes``, ``sample_type="uniform"``): with the video's frame rate
   ``video_fps`` and VideoAlign's sampling rate ``fps`` (2), take
   ``n = total / video_fps * fps``, clamp it to ``[4, floor_even(min(768, total))]``, round it to
   an even number, cap it at ``total``, and read frames ``linspace(0, total - 1, n).round()``
   (float32, as ``torch.linspace`` defaults to). A fixed ``num_frames`` rounds to even instead.
3. Resize every frame to ``smart_resize(H, W)``: multiples of 28 (patch 14 x merge 2), aspect
   kept, area within ``[min_pixels, max_pixels]`` (qwen-vl-utils' video minimum ``128 * 28 * 28``
   and VideoAlign's ``max_frame_pixels`` 448 * 448), with torchvision's bicubic antialiased resize
   on the uint8 frames (its output is uint8 again).
4. What Qwen2-VL's processor then does (its own resize is the identity on such sizes): rescale by
   1/255, normalise with the CLIP mean and std, repeat the last frame to a multiple of the
   temporal patch (never needed: ``n`` is even), and cut ``2 x 14 x 14`` patches in the order of
   its 2 x 2 spatial merge. The result is ``pixel_values_videos [sum(T*H*W), 3*2*14*14]`` and
   ``video_grid_thw [B, 3]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# qwen-vl-utils constants VideoAlign's vision_process.py keeps.
IMAGE_FACTOR = 28
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
MAX_RATIO = 200


def _round_to(number: float, factor: int) -> int:
    # Python's round(): half to even, as qwen-vl-utils' round_by_factor.
    return round(number / factor) * factor


def _ceil_to(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_to(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = 448 * 448,
) -> tuple[int, int]:
    """qwen-vl-utils' frame size: both sides multiples of ``factor``, the aspect ratio kept as
    closely as that allows, and the area brought inside ``[min_pixels, max_pixels]``."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"VideoAlign (Qwen2-VL) needs an aspect ratio below {MAX_RATIO}, got {height}x{width}"
        )
    h = max(factor, _round_to(height, factor))
    w = max(factor, _round_to(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        # max(factor, ...): VideoAlign's copy of qwen-vl-utils can floor a side to 0 here for
        # extreme aspect ratios (and then fails); newer qwen-vl-utils and transformers keep 28.
        h = max(factor, _floor_to(height / beta, factor))
        w = max(factor, _floor_to(width / beta, factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = _ceil_to(height * beta, factor)
        w = _ceil_to(width * beta, factor)
    return h, w


def num_sampled_frames(
    total: int, video_fps: float, fps: float, num_frames: int | None = None
) -> int:
    """How many frames VideoAlign reads from a ``total``-frame video (qwen-vl-utils'
    ``smart_nframes``): ``fps`` frames per second of video, or a fixed ``num_frames``."""
    if num_frames is not None:
        count = _round_to(num_frames, FRAME_FACTOR)
    else:
        low = _ceil_to(FPS_MIN_FRAMES, FRAME_FACTOR)
        high = _floor_to(min(FPS_MAX_FRAMES, total), FRAME_FACTOR)
        count = _round_to(min(max(total / video_fps * fps, low), high), FRAME_FACTOR)
    count = min(count, total)
    if not FRAME_FACTOR <= count <= total:
        raise ValueError(
            f"VideoAlign reads at least {FRAME_FACTOR} frames; a video of {total} frame(s) "
            f"gives {count}"
        )
    return count


def sampled_frame_indices(
    total: int, video_fps: float, fps: float, num_frames: int | None = None
) -> torch.Tensor:
    """Indices (int64) of the frames VideoAlign reads, uniformly spaced, first and last included.

    float32 ``linspace`` then ``round`` (half to even), exactly as ``vision_process.py`` computes
    them, so that ties land where they land there."""
    count = num_sampled_frames(total, video_fps, fps, num_frames)
    return torch.linspace(0, total - 1, count).round().long()


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to uint8 by rounding in fp32 (non-finite values must be removed first)."""
    return (pixels.float() * 255).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class VisionSpec:
    """Qwen2-VL's patching and normalisation, read from the base model's preprocessor config."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 frames ``[N, 3, H, W]`` (torchvision, uint8 out), as
    ``vision_process.fetch_video`` resizes decoded frames."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    if frames.shape[-2:] == (height, width):
        return frames
    return resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)


def patchify(frames: torch.Tensor, spec: VisionSpec) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised patches of one video's uint8 frames ``[T, 3, H, W]`` in Qwen2-VL's order.

    Returns ``[grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch]`` (fp32) and the
    grid ``(grid_t, grid_h, grid_w)``.
    """
    t, c, h, w = frames.shape
    p, tp, m = spec.patch_size, spec.temporal_patch_size, spec.merge_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {p * m}")
    pixels = frames.float() * spec.rescale_factor
    mean = torch.tensor(spec.image_mean, device=pixels.device).view(1, c, 1, 1)
    std = torch.tensor(spec.image_std, device=pixels.device).view(1, c, 1, 1)
    pixels = (pixels - mean) / std
    if t % tp:
        pixels = torch.cat([pixels, pixels[-1:].expand(tp - t % tp, -1, -1, -1)])
    gt, gh, gw = pixels.shape[0] // tp, h // p, w // p
    patches = pixels.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # (t, merge rows, merge cols, row in merge, col in merge) outside; (c, tp, p, p) inside.
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)
