"""A tiny scene grammar of coloured shapes, and a renderer for it.

A prompt names a count, a colour, a shape and optionally a region::

    "a red circle", "two blue squares on the left", "three yellow triangles at the top"

:func:`render` draws a scene that satisfies a prompt exactly; it makes the pretraining data of the
bundled toy text-to-image model and the ground truth that tests the ``shapes`` reward.

Geometry (shared with :mod:`dance_shapes.analysis`, which checks it from pixels): every shape sits
in a square box of side ``round(u * size)``, ``u`` uniform in [0.18, 0.26]; boxes keep a margin of
one pixel from the image border and a gap of ``max(2, round(0.05 * size))`` background pixels
between each other. A shape is "in" a region when its centroid is: left means x <= 0.45 * W, right
x >= 0.55 * W, top y <= 0.45 * H, bottom y >= 0.55 * H (continuous coordinates, pixel ``i`` covers
``[i, i + 1)``). The reward accepts the looser halves (x < 0.5 * W, ...), so rendered scenes pass
with room to spare.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNTS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
# "" means anywhere in the image.
POSITIONS: tuple[str, ...] = ("", "on the left", "on the right", "at the top", "at the bottom")

# Bounds of the shape size, as fractions of the image side.
SIZE_RANGE = (0.18, 0.26)
# Where a shape's centroid may lie for each position, as (axis, low, high) fractions of the side;
# axis 0 is x, 1 is y.
REGIONS: dict[str, tuple[int, float, float] | None] = {
    "": None,
    "on the left": (0, 0.0, 0.45),
    "on the right": (0, 0.55, 1.0),
    "at the top": (1, 0.0, 0.45),
    "at the bottom": (1, 0.55, 1.0),
}
MARGIN = 1
MIN_SIZE = 16

_WORD_COUNTS = {word: count for count, word in COUNTS.items()}


def _grammar() -> str:
    return (
        f"'<count> <colour> <shape>[s] [<position>]' with count in {list(COUNTS.values())}, "
        f"colour in {list(COLORS)}, shape in {list(SHAPES)} (plural after 'two'/'three'), "
        f"position in {[p for p in POSITIONS if p]} or none"
    )


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks for: ``count`` shapes of one ``color`` and ``shape`` in ``position``."""

    count: int
    color: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {list(COUNTS)}, got {self.count!r}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {list(COLORS)}, got {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {list(POSITIONS)}, got {self.position!r}")

    @property
    def prompt(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        words = [COUNTS[self.count], self.color, noun]
        if self.position:
            words.append(self.position)
        return " ".join(words)

    @classmethod
    def parse(cls, prompt: str) -> SceneSpec:
        """The spec of a grammar prompt; case, extra spaces and a final '.' are ignored.

        Raises ValueError naming the prompt when it is outside the grammar.
        """
        words = prompt.strip().rstrip(".").lower().split()
        error = ValueError(f"prompt {prompt!r} is outside the shapes grammar: {_grammar()}")
        if len(words) < 3:
            raise error
        count = _WORD_COUNTS.get(words[0])
        color, noun, position = words[1], words[2], " ".join(words[3:])
        shape = noun if count == 1 else noun[:-1] if noun.endswith("s") else None
        if count is None or color not in COLORS or shape not in SHAPES:
            raise error
        if position not in POSITIONS:
            raise error
        return cls(count, color, shape, position)


def all_specs() -> list[SceneSpec]:
    """Every spec of the grammar (180), in a fixed order: count, colour, shape, position."""
    return [
        SceneSpec(count, color, shape, position)
        for count in COUNTS
        for color in COLORS
        for shape in SHAPES
        for position in POSITIONS
    ]


def random_spec(rng: random.Random | np.random.Generator) -> SceneSpec:
    """A spec drawn uniformly from :func:`all_specs` with ``rng`` (stdlib or numpy)."""
    specs = all_specs()
    if isinstance(rng, np.random.Generator):
        return specs[int(rng.integers(len(specs)))]
    return specs[rng.randrange(len(specs))]


# -- layout ---------------------------------------------------------------------------------------

Box = tuple[int, int, int]  # (x0, y0, side): the shape covers pixels x0..x0+side-1, y0..y0+side-1


def _centroid_offset(shape: str, side: int) -> tuple[float, float]:
    """Centroid of a shape relative to its box corner, in continuous coordinates."""
    # An upward triangle's centroid is two thirds of the way down its box.
    return side / 2, (2 * side / 3 if shape == "triangle" else side / 2)


def _corner_range(
    shape: str, side: int, size: int, position: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Inclusive ranges of x0 and y0 that keep the box inside the margin and the centroid in the
    region (they may be empty: low > high)."""
    ranges = [[MARGIN, size - MARGIN - side], [MARGIN, size - MARGIN - side]]
    region = REGIONS[position]
    if region is not None:
        axis, low, high = region
        offset = _centroid_offset(shape, side)[axis]
        ranges[axis][0] = max(ranges[axis][0], math.ceil(low * size - offset))
        ranges[axis][1] = min(ranges[axis][1], math.floor(high * size - offset))
    return (ranges[0][0], ranges[0][1]), (ranges[1][0], ranges[1][1])


def _gap(size: int) -> int:
    return max(2, round(0.05 * size))


def _apart(a: Box, b: Box, gap: int) -> bool:
    """Whether two boxes leave at least ``gap`` background pixels between them on some axis."""
    ax, ay, asz = a
    bx, by, bsz = b
    return (
        bx - (ax + asz) >= gap
        or ax - (bx + bsz) >= gap
        or by - (ay + asz) >= gap
        or (ay - (by + bsz) >= gap)
    )


def _random_layout(
    spec: SceneSpec, size: int, rng: random.Random, restarts: int = 50, tries: int = 60
) -> list[Box] | None:
    gap = _gap(size)
    for _ in range(restarts):
        boxes: list[Box] = []
        for _ in range(spec.count):
            side = max(3, round(rng.uniform(*SIZE_RANGE) * size))
            (x_lo, x_hi), (y_lo, y_hi) = _corner_range(spec.shape, side, size, spec.position)
            if x_lo > x_hi or y_lo > y_hi:
                break
            for _ in range(tries):
                box = (rng.randint(x_lo, x_hi), rng.randint(y_lo, y_hi), side)
                if all(_apart(box, other, gap) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == spec.count:
            return boxes
    return None


def _fallback_layout(spec: SceneSpec, size: int) -> list[Box]:
    """Smallest shapes in a row (or a column, for left/right) through the region's middle.

    Rejection sampling practically never gets here; this keeps :func:`render` total.
    """
    side = max(3, round(SIZE_RANGE[0] * size))
    gap = _gap(size)
    (x_lo, x_hi), (y_lo, y_hi) = _corner_range(spec.shape, side, size, spec.position)
    region = REGIONS[spec.position]
    along = 1 if region is not None and region[0] == 0 else 0  # stack across the region's axis
    span = spec.count * side + (spec.count - 1) * gap
    start = (size - span) // 2
    across = ((x_lo + x_hi) // 2, (y_lo + y_hi) // 2)[1 - along]
    boxes = []
    for k in range(spec.count):
        pos = start + k * (side + gap)
        boxes.append((pos, across, side) if along == 0 else (across, pos, side))
    return boxes


def layout(spec: SceneSpec, size: int = 64, seed: int = 0) -> list[Box]:
    """The boxes ``(x0, y0, side)`` of the shapes :func:`render` draws for these arguments."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    # A string seed is hashed deterministically (sha512) by random.Random, unlike hash(); mixing
    # in the prompt gives different specs different layouts for the same seed.
    rng = random.Random(f"{spec.prompt}|{size}|{seed}")
    return _random_layout(spec, size, rng) or _fallback_layout(spec, size)


def _draw(draw: Any, shape: str, box: Box, fill: tuple[int, int, int]) -> None:
    x0, y0, side = box
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    else:  # an upward isosceles triangle filling its box: base at the bottom, apex at the top
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def render(spec: SceneSpec, size: int = 64, seed: int = 0) -> Image.Image:
    """An RGB ``size`` x ``size`` image of ``spec``: flat shapes on :data:`BACKGROUND`, no
    antialiasing. Deterministic in ``(spec, size, seed)``."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for box in layout(spec, size, seed):
        _draw(draw, spec.shape, box, COLORS[spec.color])
    return image


def render_tensor(spec: SceneSpec, size: int = 64, seed: int = 0) -> torch.Tensor:
    """:func:`render` as a float32 tensor ``[3, size, size]`` in [0, 1]."""
    array = np.asarray(render(spec, size, seed), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
