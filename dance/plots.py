"""Small PNG figures drawn with Pillow alone (matplotlib is not a dependency)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dance.run_log import media_to_grid

PANEL_W, PANEL_H, MARGIN = 560, 200, 48
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def line_chart(series: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    """One panel per series (each has its own units), x shared: iterations, say."""
    names = [n for n, pts in series.items() if pts]
    height = MARGIN + len(names) * (PANEL_H + MARGIN)
    image = Image.new("RGB", (PANEL_W + 2 * MARGIN + 40, max(height, 2 * MARGIN)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    for row, name in enumerate(names):
        pts = [(x, y) for x, y in series[name] if math.isfinite(y)]
        top = MARGIN + row * (PANEL_H + MARGIN)
        left, right, bottom = MARGIN + 40, MARGIN + 40 + PANEL_W, top + PANEL_H
        draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        draw.text((left, top - 14), name, fill="black")
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 1.0
        y0, y1 = min(ys) - pad, max(ys) + pad

        def to_px(x: float, y: float, x0=x0, x1=x1, y0=y0, y1=y1, left=left, bottom=bottom):
            return (
                left + (x - x0) / (x1 - x0) * PANEL_W,
                bottom - (y - y0) / (y1 - y0) * PANEL_H,
            )

        for y in _ticks(y0, y1):
            _, py = to_px(x0, y)
            draw.line([left - 4, py, left, py], fill="black")
            draw.text((2, py - 6), f"{y:.3g}", fill="black")
        for x in _ticks(x0, x1):
            px, _ = to_px(x, y0)
            draw.line([px, bottom, px, bottom + 4], fill="black")
            draw.text((px - 8, bottom + 6), f"{x:.0f}", fill="black")
        colour = COLOURS[row % len(COLOURS)]
        draw.line([to_px(x, y) for x, y in pts], fill=colour, width=2)
        for x, y in pts:
            px, py = to_px(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _to_rgb_image(grid: torch.Tensor) -> Image.Image:
    """A ``[H, W, C]`` uint8 grid as an RGB picture (one channel: grey)."""
    array = grid.numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")


def before_after_grid(
    before: torch.Tensor, after: torch.Tensor, path: Path, columns: int = 8
) -> None:
    """Two labelled image grids, before training above and after below.

    Videos ``[B, C, F, H, W]`` are shown by their middle frame (see
    :func:`dance.run_log.media_to_grid`); one-channel media are drawn in grey.
    """
    top = _to_rgb_image(media_to_grid(before.float(), columns))
    bottom = _to_rgb_image(media_to_grid(after.float(), columns))
    label = 18
    canvas = Image.new("RGB", (top.width, top.height + bottom.height + 2 * label + 8), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "before training", fill="black")
    canvas.paste(top, (0, label))
    draw.text((4, label + top.height + 8 + 3), "after training", fill="black")
    canvas.paste(bottom, (0, 2 * label + top.height + 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def overlay_chart(
    series: dict[str, list[tuple[float, float]]],
    path: Path,
    title: str,
    x_label: str = "",
    y_label: str = "",
    log2_x: bool = False,
) -> None:
    """Several series in one panel (shared units), with a legend; ``log2_x`` spaces x = 1, 2, 4,
    ... evenly (Best-of-N curves)."""
    pts_all = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    image = Image.new("RGB", (PANEL_W + 2 * MARGIN + 40, PANEL_H + 3 * MARGIN + 16), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    top, left = MARGIN, MARGIN + 40
    right, bottom = left + PANEL_W, top + PANEL_H
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    if pts_all:

        def fx(x: float) -> float:
            return math.log2(x) if log2_x else x

        xs, ys = [fx(p[0]) for p in pts_all], [p[1] for p in pts_all]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        pad = (max(ys) - min(ys)) * 0.08 or abs(max(ys)) * 0.05 or 1.0
        y0, y1 = min(ys) - pad, max(ys) + pad

        def to_px(x: float, y: float) -> tuple[float, float]:
            return (
                left + (fx(x) - x0) / (x1 - x0) * PANEL_W,
                bottom - (y - y0) / (y1 - y0) * PANEL_H,
            )

        for y in _ticks(y0, y1):
            _, py = to_px(2**x0 if log2_x else x0, y)
            draw.line([left - 4, py, left, py], fill="black")
            draw.text((2, py - 6), f"{y:.3g}", fill="black")
        for x in sorted({p[0] for p in pts_all}):
            px, _ = to_px(x, y0)
            draw.line([px, bottom, px, bottom + 4], fill="black")
            draw.text((px - 6, bottom + 6), f"{x:g}", fill="black")
        for row, (name, pts) in enumerate(series.items()):
            colour = COLOURS[row % len(COLOURS)]
            finite = [(x, y) for x, y in pts if math.isfinite(y)]
            if len(finite) > 1:
                draw.line([to_px(x, y) for x, y in finite], fill=colour, width=2)
            for x, y in finite:
                px, py = to_px(x, y)
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            ly = top + 8 + 14 * row
            draw.line([left + 10, ly + 6, left + 30, ly + 6], fill=colour, width=3)
            draw.text((left + 36, ly), name, fill="black")
    draw.text((left + PANEL_W // 2 - 3 * len(x_label), bottom + 24), x_label, fill="black")
    draw.text((4, top - 16), y_label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
