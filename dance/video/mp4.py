"""Video files: write generated videos as MP4 (H.264) and read frames back.

Writing and reading use PyAV (``av`` on PyPI, whose wheels bundle FFmpeg with libx264). decord,
which video reward code often uses, is not used here: decord 0.6 returns frames of the wrong shape
(four channels, or an error) for widths whose RGB rows FFmpeg pads, 48 or 72 pixels for example
(dmlc/decord issues #93 and #336).

Pixels are ``[3, F, H, W]`` in [0, 1] as everywhere in dance (see :mod:`dance.interfaces`). H.264
in the 4:2:0 pixel format every player supports needs an even height and width, so a video with an
odd size is padded by one row at the bottom and/or one column on the right, a copy of the last one;
a reader then gets the padded size back.
"""

from __future__ import annotations

import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

# Frames per second of written videos unless told otherwise: HunyuanVideo's sampling scripts save
# its videos at 24 fps, and SkyReels-V1 (HunyuanVideo fine-tuned for image-to-video) generates
# 24 fps video.
DEFAULT_FPS = 24
# x264 constant rate factor: 18 is visually close to lossless at a small size.
DEFAULT_CRF = 18


class VideoFile(NamedTuple):
    frames: torch.Tensor  # [3, F, H, W] float32 in [0, 1]
    fps: float


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """``[C, F, H, W]`` pixels (float in [0, 1], or uint8) as ``[F, H, W, 3]`` uint8 RGB; one
    channel is repeated to three."""
    if frames.ndim != 4 or frames.shape[0] not in (1, 3):
        raise ValueError(f"expected video frames [3, F, H, W], got shape {tuple(frames.shape)}")
    if frames.shape[1] == 0:
        raise ValueError("a video needs at least one frame, got F = 0")
    if frames.dtype != torch.uint8:
        frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    frames = frames.cpu().expand(3, -1, -1, -1)
    return frames.permute(1, 2, 3, 0).contiguous().numpy()


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad ``[F, H, W, 3]`` frames to an even height and width by repeating the last row/column."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(
    frames: torch.Tensor,
    path: str | Path,
    fps: float = DEFAULT_FPS,
    codec: str = "libx264",
    crf: int = DEFAULT_CRF,
) -> Path:
    """Write ``frames [3, F, H, W]`` (float in [0, 1], or uint8) to ``path`` as an MP4.

    The file appears only once complete: frames are encoded into a temporary file in the same
    folder, renamed over ``path`` at the end, and the temporary file is removed on any error.
    ``codec`` is an FFmpeg encoder name; ``crf`` applies to libx264 only.
    """
    import av

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pixels = pad_to_even(to_uint8_frames(frames))  # [F, H, W, 3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the final rename stays on one file system and is atomic.
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.mp4")
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            # A Fraction keeps rates such as 24000/1001 exact in the stream's time base.
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = pixels.shape[1], pixels.shape[2]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf)}
            for frame in pixels:
                image = av.VideoFrame.from_ndarray(frame, format="rgb24")
                container.mux(stream.encode(image))
            container.mux(stream.encode())  # flush the frames the encoder still holds
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def read_mp4(path: str | Path) -> VideoFile:
    """All frames of a video file as ``[3, F, H, W]`` float32 in [0, 1], and its frame rate."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("the file holds no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else float("nan")
        arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not arrays:
        raise ValueError("the video holds no frames")
    pixels = torch.from_numpy(np.stack(arrays))  # [F, H, W, 3] uint8
    return VideoFile(pixels.permute(3, 0, 1, 2).float() / 255, fps)


def read_first_frame(path: str | Path) -> torch.Tensor:
    """The first frame of a video file as ``[3, H, W]`` float32 in [0, 1].

    Raises ``ValueError`` for a file with no video frames and PyAV's own error for one it cannot
    open or decode.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("the file holds no video stream")
        frame = next(container.decode(video=0), None)
        if frame is None:
            raise ValueError("the video holds no frames")
        pixels = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
    return pixels.permute(2, 0, 1).float() / 255
