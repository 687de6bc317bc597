"""Small PNG figures drawn with Pillow alone (matplotlib is not a dependency)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from dance.reporting.run_log import media_to_grid

PANEL_W, PANEL_H, MARGIN = 560, 200, 48
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def _integer_ticks(lo: float, hi: float, count: int = 5) -> list[int]:
    """At most about ``count + 1`` whole numbers in [lo, hi], spaced 1, 2 or 5 x 10^k apart, so
    that an iteration axis never shows a tick between two iterations."""
    first, last = math.ceil(lo), math.floor(hi)
    if last <= first:
        return [first] if first <= hi else []
    raw = (last - first) / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.ceil(first / step) * step
    return list(range(start, last + 1, step))


def line_chart(series: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    """One panel per series (each has its own units), x shared: iterations, say. When every x is
    a whole number (iterations), the x ticks are whole numbers too."""
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
        whole = all(float(x).is_integer() for x in xs)
        for x in _integer_ticks(x0, x1) if whole else _ticks(x0, x1):
            px, _ = to_px(x, y0)
            draw.line([px, bottom, px, bottom + 4], fill="black")
            draw.text((px - 8, bottom + 6), f"{x:d}" if whole else f"{x:.3g}", fill="black")
        colour = COLOURS[row % len(COLOURS)]
        draw.line([to_px(x, y) for x, y in pts], fill=colour, width=2)
        for x, y in pts:
            px, py = to_px(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    _save_png(image, path)


def _to_rgb_image(grid: torch.Tensor) -> Image.Image:
    """A ``[H, W, C]`` uint8 grid as an RGB picture (one channel: grey)."""
    array = grid.numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")


def before_after_grid(
    before: torch.Tensor,
    after: torch.Tensor,
    path: Path,
    columns: int = 8,
    prompts: list[str] | None = None,
) -> None:
    """The held-out images before and after training, in one picture.

    Without ``prompts``: two grids ``columns`` wide, before training above and after below. With
    ``prompts`` (one per image, images of one prompt next to each other, as the evaluation orders
    them): one row per prompt, labelled with it, its images before training on the left and after
    on the right. Videos ``[B, C, F, H, W]`` are shown by their middle frame (see
    :func:`dance.reporting.run_log.media_to_grid`); one-channel media are drawn in grey.
    """
    if prompts is not None:
        _labelled_before_after(before, after, path, prompts)
        return
    top = _to_rgb_image(media_to_grid(before.float(), columns))
    bottom = _to_rgb_image(media_to_grid(after.float(), columns))
    label = 18
    canvas = Image.new("RGB", (top.width, top.height + bottom.height + 2 * label + 8), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "before training", fill="black")
    canvas.paste(top, (0, label))
    draw.text((4, label + top.height + 8 + 3), "after training", fill="black")
    canvas.paste(bottom, (0, 2 * label + top.height + 8))
    _save_png(canvas, path)


def _prompt_rows(prompts: list[str]) -> list[tuple[str, int, int]]:
    """``(prompt, first image, image count)`` for each run of equal consecutive prompts."""
    rows: list[tuple[str, int, int]] = []
    for i, text in enumerate(prompts):
        if rows and rows[-1][0] == text and rows[-1][1] + rows[-1][2] == i:
            rows[-1] = (text, rows[-1][1], rows[-1][2] + 1)
        else:
            rows.append((text, i, 1))
    return rows


def _labelled_before_after(
    before: torch.Tensor, after: torch.Tensor, path: Path, prompts: list[str]
) -> None:
    if not len(prompts) == before.shape[0] == after.shape[0]:
        raise ValueError(
            f"{len(prompts)} prompts for {before.shape[0]} images before and {after.shape[0]} "
            "after training; give one prompt per image"
        )
    rows = _prompt_rows(prompts)
    per_row = max(count for _, _, count in rows)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 12 + max(int(measure.textlength(text, font=font)) for text, _, _ in rows)
    left = _to_rgb_image(media_to_grid(before[:1].float(), 1))
    h, w = left.height, left.width
    gap, header = 12, 20
    width = label_w + 2 * per_row * w + gap
    canvas = Image.new("RGB", (width, header + len(rows) * h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), "before training", fill="black", font=font)
    draw.text((label_w + per_row * w + gap, 4), "after training", fill="black", font=font)
    for r, (text, first, count) in enumerate(rows):
        y = header + r * h
        top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
        draw.text((4, y + (h - top - bottom) // 2), text, fill="black", font=font)
        for side, media in enumerate((before, after)):
            strip = _to_rgb_image(media_to_grid(media[first : first + count].float(), count))
            canvas.paste(strip, (label_w + side * (per_row * w + gap), y))
    _save_png(canvas, path)


def _save_png(image: Image.Image, path: Path) -> None:
    """Save as a true-colour RGB PNG (never palette-reduced: colours are what the demo is about)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, format="PNG")


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
    _save_png(image, path)
