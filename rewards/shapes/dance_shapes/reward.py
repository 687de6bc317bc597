"""The ``shapes`` reward: does an image show what a shapes-grammar prompt asks for?

Weight-free: it reads the scene back from pixels (:mod:`dance_shapes.analysis`) and checks the
prompt's colour, count, shape and position (:mod:`dance_shapes.scenes` has the grammar). The four
checks and how they combine are this package's own definitions, not taken from a paper:

* ``color``: 0 without any component (a connected region above ``min_area``) of the requested
  colour; else ``R / (R + max(0, O - 0.005 * H * W))``, with ``R`` the pixels of the requested
  colour and ``O`` those of the other palette colours. So 1 when other colours cover under 0.5% of
  the image, and the share of the requested colour among the coloured pixels beyond that.
* ``count``: with ``n`` components of the requested colour and ``t`` requested, ``0.5 ** |n - t|``
  when ``n >= 1``, else 0: 1 when exact, halved for each shape too many or too few.
* ``shape``: the fraction of those components classified as the requested shape (0 when none).
* ``position``: the fraction of those components whose centroid lies in the requested half of the
  image (left: x < W/2, right: x > W/2, top: y < H/2, bottom: y > H/2; looser than the renderer's
  45% bands); 1 when the prompt names no position; 0 when there are no such components, so that
  an empty picture earns nothing (otherwise GRPO learns to draw nothing for prompts it gets wrong).
* ``score``: the mean of the four, in [0, 1]. ``success``: 1 when all four are exactly 1, else 0.
* ``fidelity``: a graded companion of ``shape`` for training: the mean, over the components of the
  requested colour, of their intersection over union with the requested shape drawn ideally in
  their bounding box (0 when there are none). ``shape`` only changes when a region crosses a
  classification threshold; ``fidelity`` rewards every step towards a cleaner square, circle or
  triangle, so the samples of a group that tie on ``score`` still differ. It is not part of
  ``score`` or ``success``.

A video scores as the mean over uniformly spaced frames (:mod:`dance.video.frames`), so its
``success`` is the fraction of those frames that succeed. An image with a non-finite pixel gets NaN
in every
component, so the trainer can leave it out instead of learning from a made-up score. A prompt
outside the grammar raises ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from dance.config import option
from dance.interfaces import Prompt, Reward, RewardOutput
from dance.video.frames import frames_for_image_reward, mean_over_frames
from dance_shapes.analysis import (
    DEFAULT_COLOR_THRESHOLD,
    DEFAULT_MIN_AREA,
    ImageAnalysis,
    analyze,
)
from dance_shapes.scenes import SceneSpec

# Pixels of other palette colours tolerated before the colour check loses credit, as a fraction
# of the image: a few stray pixels should not cost a scene its success.
STRAY_FRACTION = 0.005
CHECKS = ("color", "count", "shape", "position")


@dataclass
class ShapesConfig:
    min_area: float = option(
        DEFAULT_MIN_AREA,
        "Smallest component that counts as a shape, as a fraction of the image area.",
        gt=0,
        lt=1,
    )
    color_threshold: float = option(
        DEFAULT_COLOR_THRESHOLD,
        "Largest RGB distance (pixels in [0, 1]) from a pixel to a blend of at least 50% of a "
        "palette colour with the background for it to count as that colour.",
        gt=0,
    )
    video_frames: int = option(
        8, "Videos score as the mean over this many uniformly spaced frames.", ge=1
    )


@lru_cache(maxsize=1024)
def _parse(text: str) -> SceneSpec:
    return SceneSpec.parse(text)


def _in_region(position: str, x: float, y: float, height: int, width: int) -> bool:
    if position == "on the left":
        return x < width / 2
    if position == "on the right":
        return x > width / 2
    if position == "at the top":
        return y < height / 2
    if position == "at the bottom":
        return y > height / 2
    return True


def check_scene(spec: SceneSpec, analysis: ImageAnalysis) -> dict[str, float]:
    """The four checks (``color``, ``count``, ``shape``, ``position``) of one analysed image; see
    the module docstring for the rules."""
    components = analysis.components
    n = len(components)
    wanted = analysis.color_pixels[spec.color]
    others = sum(v for k, v in analysis.color_pixels.items() if k != spec.color)
    excess = max(0.0, others - STRAY_FRACTION * analysis.height * analysis.width)
    color = wanted / (wanted + excess) if n > 0 else 0.0
    count = 0.5 ** abs(n - spec.count) if n > 0 else 0.0
    shape = sum(c.shape == spec.shape for c in components) / n if n > 0 else 0.0
    if n == 0:
        position = 0.0
    elif not spec.position:
        position = 1.0
    else:
        inside = [
            _in_region(spec.position, *c.centroid, analysis.height, analysis.width)
            for c in components
        ]
        position = sum(inside) / n
    fidelity = float(np.mean([c.template_iou[spec.shape] for c in components])) if n else 0.0
    return {
        "color": color,
        "count": count,
        "shape": shape,
        "position": position,
        "fidelity": fidelity,
    }


class ShapesReward(Reward):
    """Checks colour, count, shape and position of a shapes-grammar prompt from pixels."""

    name = "shapes"
    config_class = ShapesConfig
    modalities = ("image", "video")
    differentiable = False
    components = ("score", "success", *CHECKS, "fidelity")

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        batch = media.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
        specs = [_parse(p.text) for p in prompts]
        if batch == 0:
            return {name: torch.zeros(0, device=media.device) for name in self.components}
        images, per_sample = frames_for_image_reward(media, self.config.video_frames)
        if images.shape[1] != 3:
            raise ValueError(f"expected RGB media (3 channels), got shape {tuple(media.shape)}")
        pixels = images.detach().to("cpu", torch.float32).numpy()
        finite = np.isfinite(pixels).all(axis=(1, 2, 3))
        frame_specs = [spec for spec in specs for _ in range(per_sample)]  # sample-major frames
        analyses = analyze(
            np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0),
            [spec.color for spec in frame_specs],
            min_area=self.config.min_area,
            color_threshold=self.config.color_threshold,
        )
        rows = np.full((len(frame_specs), len(self.components)), np.nan, dtype=np.float64)
        for i, (spec, analysis) in enumerate(zip(frame_specs, analyses, strict=True)):
            if not finite[i]:
                continue
            checks = check_scene(spec, analysis)
            values = [checks[name] for name in CHECKS]
            success = float(all(v == 1.0 for v in values))
            rows[i] = [float(np.mean(values)), success, *values, checks["fidelity"]]
        table = torch.from_numpy(rows).to(torch.float32)
        return {
            name: mean_over_frames(table[:, k].contiguous(), batch).to(media.device)
            for k, name in enumerate(self.components)
        }
