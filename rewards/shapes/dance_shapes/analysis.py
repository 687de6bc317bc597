"""Reading a shapes scene back from pixels, with no learned weights.

1. Every pixel is a palette colour or background (:func:`classify_pixels`): it takes colour ``c``
   when it is at least a 50% blend of ``c`` with the background, give or take
   ``color_threshold`` (Euclidean distance in RGB, pixels in [0, 1]). Off-palette colours and
   everything else count as background.
2. The pixels of one colour split into 8-connected components; components smaller than
   ``min_area`` (a fraction of the image) are specks and are dropped.
3. Each component gets its area, centroid, bounding box, fill ratio (area / box area: about 1.0
   for a square, 0.785 for a circle, 0.5 for a triangle), the slope of its row widths (a row's
   pixel count over the box width, regressed on the row's position from top -0.5 to bottom +0.5:
   about +1 for an upward triangle, whose width grows linearly downward, and 0 for squares and
   circles) and a shape from these (:func:`classify_shape`).
4. Each component also gets its intersection over union with the ideal circle, square and
   upward triangle inscribed in its bounding box (:func:`template_iou`): a graded measure of how
   well it is drawn, where the classification is all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dance_shapes.scenes import BACKGROUND, COLORS

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_BACKGROUND = np.array(BACKGROUND, dtype=np.float32) / 255
# Background-to-colour directions, one row per palette colour (index = position in COLOR_NAMES).
_DIRECTIONS = np.array(list(COLORS.values()), dtype=np.float32) / 255 - _BACKGROUND
_DIRECTION_NORM2 = (_DIRECTIONS * _DIRECTIONS).sum(axis=1)
NO_COLOR = -1

DEFAULT_MIN_AREA = 0.015
DEFAULT_COLOR_THRESHOLD = 0.25


@dataclass
class Component:
    """One connected region of a palette colour. Coordinates are continuous: pixel ``(x, y)``
    covers ``[x, x + 1) x [y, y + 1)``."""

    area: int  # pixels
    centroid: tuple[float, float]  # (x, y)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive
    fill: float  # area / bbox area
    slope: float  # row-width slope, see the module docstring
    shape: str  # "circle", "square", "triangle" or "other"
    # Intersection over union of the region with each ideal shape drawn in its bounding box.
    template_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageAnalysis:
    """What one image shows in the colour asked about."""

    color: str
    height: int
    width: int
    components: list[Component] = field(default_factory=list)
    # Pixels of each palette colour in the whole image (specks included).
    color_pixels: dict[str, int] = field(default_factory=dict)

    @property
    def shapes(self) -> list[str]:
        return [c.shape for c in self.components]


def classify_pixels(
    images: torch.Tensor | np.ndarray, color_threshold: float = DEFAULT_COLOR_THRESHOLD
) -> np.ndarray:
    """Palette index (``COLOR_NAMES``) of every pixel of ``[B, 3, H, W]`` images in [0, 1], or
    ``NO_COLOR`` (-1) for background and anything not close to a palette colour: int8 ``[B, H, W]``.

    A pixel goes to whichever is nearest (Euclidean in RGB): colour ``c``, represented by the
    colour half of the line from the background to ``c`` (blends of at least 50% ``c``), or the
    background, represented by the background halves of those lines; it keeps colour ``c`` only
    when that distance is below ``color_threshold``. Blends with the background (blurred edges)
    thus split at 50%, which keeps a blurred shape's area and outline, and never become another
    colour. (Nearest-of-the-pure-colours would not do: a 50/50 blend of red and the background is
    nearer pure yellow, 0.48 away, than pure red or the background, 0.57.)
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    pixels = np.asarray(images, dtype=np.float32).transpose(0, 2, 3, 1)  # [B, H, W, 3]
    offset = pixels - _BACKGROUND  # [B, H, W, 3]
    norm2 = np.einsum("...c,...c->...", offset, offset)[..., None]  # [B, H, W, 1]
    # alpha: position of the pixel's projection on each background-to-colour line (0 at the
    # background, 1 at the colour); the squared distance to the point at ``a`` on line ``k`` is
    # |offset|^2 + |v_k|^2 (a^2 - 2 a alpha).
    alpha = offset @ _DIRECTIONS.T / _DIRECTION_NORM2  # [B, H, W, 4]

    def dist2(a: np.ndarray) -> np.ndarray:
        return np.maximum(norm2 + _DIRECTION_NORM2 * (a * a - 2 * a * alpha), 0.0)

    to_color = dist2(np.clip(alpha, 0.5, 1.0))  # [B, H, W, 4]
    to_background = dist2(np.clip(alpha, 0.0, 0.5)).min(axis=-1)  # [B, H, W]
    nearest = to_color.argmin(axis=-1)
    best = np.take_along_axis(to_color, nearest[..., None], axis=-1)[..., 0]
    palette = (best <= to_background) & (best < color_threshold**2)
    return np.where(palette, nearest, NO_COLOR).astype(np.int8)


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean ``[B, H, W]`` mask (images kept apart).

    Returns int64 labels ``[B, H, W]``: -1 off the mask, else the flat index of one pixel of the
    component (equal labels = same component). Min-label propagation with pointer jumping, all in
    numpy: each round every pixel takes the smallest label around it, then follows labels to the
    labels they point at, so a round's reach doubles and few rounds are needed.
    """
    batch, height, width = mask.shape
    size = mask.size
    flat_mask = mask.reshape(-1)
    labels = np.where(flat_mask, np.arange(size), size)  # `size` marks "off the mask"
    while True:
        pad = ((0, 0), (1, 1), (1, 1))
        grid = np.pad(labels.reshape(batch, height, width), pad, constant_values=size)
        smallest = grid[:, 1:-1, 1:-1].copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(smallest, grid[:, dy : dy + height, dx : dx + width], out=smallest)
        new = np.where(flat_mask, smallest.reshape(-1), size)
        # Pointer jumping: a label is the index of a pixel in the same component, whose own label
        # is no larger, so following it is safe and shortens chains.
        for _ in range(4):
            new = np.where(flat_mask, new[np.minimum(new, size - 1)], size)
        if np.array_equal(new, labels):
            break
        labels = new
    return np.where(flat_mask, labels, -1).reshape(batch, height, width)


def classify_shape(fill: float, slope: float, aspect: float) -> str:
    """The grammar shape a component looks like, or "other".

    Thresholds sit between the ideal values (square fill 1, circle 0.785, triangle fill 0.5 and
    slope 1) with room for the pixel staircase of small shapes (a 6-pixel circle fills 0.81 of
    its box) and for blur (which rounds a small square's corners to a fill near 0.9 and a small
    triangle's to 0.85). A shape much wider than tall (or the reverse) is none of them: every
    grammar shape has a square box. An upside-down triangle (slope near -1) is "other".
    """
    if not 0.6 <= aspect <= 1 / 0.6:
        return "other"
    if slope >= 0.5 and 0.3 <= fill <= 0.9:
        return "triangle"
    if abs(slope) < 0.3:
        if fill >= 0.85:
            return "square"
        if 0.6 <= fill < 0.85:
            return "circle"
    return "other"


def template_iou(region: np.ndarray) -> dict[str, float]:
    """IoU of a boolean ``[h, w]`` region (cropped to its bounding box) with the ideal shapes
    inscribed in that box, as the renderer draws them: the full box (square), the inscribed
    ellipse (circle) and the upward isosceles triangle with its base on the bottom edge and its
    apex at the top centre. Pixels count as inside a template when their centre is."""
    h, w = region.shape
    y = (np.arange(h)[:, None] + 0.5) / h  # [h, 1] 0 at the top, 1 at the bottom
    x = (np.arange(w)[None, :] + 0.5) / w - 0.5  # [1, w] -0.5 .. 0.5
    templates = {
        "square": np.ones((h, w), dtype=bool),
        "circle": (2 * x) ** 2 + (2 * y - 1) ** 2 <= 1.0,
        "triangle": np.abs(x) <= y / 2,
    }
    out = {}
    for name, template in templates.items():
        union = np.logical_or(region, template).sum()
        out[name] = float(np.logical_and(region, template).sum() / union) if union else 0.0
    return out


def _describe(ys: np.ndarray, xs: np.ndarray) -> Component:
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    height, width = y1 - y0, x1 - x0
    area = int(ys.size)
    fill = area / (height * width)
    widths = np.bincount(ys - y0, minlength=height) / width
    t = (np.arange(height) + 0.5) / height - 0.5
    denom = float((t * t).sum())
    slope = float((t * (widths - widths.mean())).sum() / denom) if height > 1 else 0.0
    return Component(
        area=area,
        centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
        bbox=(x0, y0, x1, y1),
        fill=fill,
        slope=slope,
        shape=classify_shape(fill, slope, width / height),
        template_iou=template_iou(_crop(ys - y0, xs - x0, height, width)),
    )


def _crop(ys: np.ndarray, xs: np.ndarray, height: int, width: int) -> np.ndarray:
    region = np.zeros((height, width), dtype=bool)
    region[ys, xs] = True
    return region


def analyze(
    images: torch.Tensor | np.ndarray,
    colors: Sequence[str],
    min_area: float = DEFAULT_MIN_AREA,
    color_threshold: float = DEFAULT_COLOR_THRESHOLD,
) -> list[ImageAnalysis]:
    """Components of ``colors[i]`` in image ``i`` of ``[B, 3, H, W]`` pixels in [0, 1].

    Components are listed top to bottom, then left to right (by their first pixel).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got shape {images.shape}")
    batch, _, height, width = images.shape
    if len(colors) != batch:
        raise ValueError(f"got {len(colors)} colours for {batch} images")
    unknown = sorted(set(colors) - set(COLOR_NAMES))
    if unknown:
        raise ValueError(f"unknown colours {unknown}; the palette is {list(COLOR_NAMES)}")
    classes = classify_pixels(images, color_threshold)  # [B, H, W]
    counts = np.stack([(classes == k).sum(axis=(1, 2)) for k in range(len(COLOR_NAMES))], axis=1)
    wanted = np.array([COLOR_NAMES.index(c) for c in colors])
    mask = classes == wanted[:, None, None]
    labels = label_components(mask)

    results = [
        ImageAnalysis(
            color=colors[b],
            height=height,
            width=width,
            color_pixels={name: int(counts[b, k]) for k, name in enumerate(COLOR_NAMES)},
        )
        for b in range(batch)
    ]
    flat = labels[mask]  # row-major order: grouped by image, then y, then x
    if flat.size == 0:
        return results
    # Labels are the smallest flat index of their component, so np.unique sorts components by
    # image and then by their first pixel in raster order.
    _, inverse, sizes = np.unique(flat, return_inverse=True, return_counts=True)
    keep = sizes >= min_area * height * width
    if not keep.any():
        return results
    bs, ys, xs = np.nonzero(mask)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for k in np.flatnonzero(keep):
        members = order[starts[k] : starts[k + 1]]
        results[int(bs[members[0]])].components.append(_describe(ys[members], xs[members]))
    return results
