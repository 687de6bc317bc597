"""The report figures: integer iteration ticks, a prompt-labelled before/after grid, RGB PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dance.reporting.plots import _integer_ticks, _prompt_rows, before_after_grid, line_chart


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0, 2, [0, 1, 2]),
        (0, 149, [0, 50, 100]),
        (1, 100, [20, 40, 60, 80, 100]),
        (0, 7, [0, 2, 4, 6]),
        (3, 3.5, [3]),
    ],
)
def test_integer_ticks_are_whole_evenly_spaced_numbers(lo, hi, expected):
    assert _integer_ticks(lo, hi) == expected


def test_reward_curve_is_an_rgb_png(tmp_path):
    line_chart({"shapes": [(0, 0.5), (1, 0.6), (2, 0.55)]}, tmp_path / "c.png", "reward")
    image = Image.open(tmp_path / "c.png")
    assert image.mode == "RGB" and image.format == "PNG"


def test_prompt_rows_group_consecutive_images_of_one_prompt():
    assert _prompt_rows(["a", "a", "b", "b", "a"]) == [("a", 0, 2), ("b", 2, 2), ("a", 4, 1)]


def solid(colours: list[tuple[int, int, int]], size: int = 8) -> torch.Tensor:
    """Images ``[B, 3, size, size]`` each filled with one colour (0-255)."""
    return (
        torch.tensor(colours, dtype=torch.float32)
        .div(255)
        .view(-1, 3, 1, 1)
        .expand(-1, -1, size, size)
    )


def test_labelled_grid_has_one_row_per_prompt_before_left_after_right(tmp_path):
    green, red, blue, grey = (0, 160, 60), (220, 30, 30), (30, 60, 220), (90, 90, 90)
    before = solid([green, green, red, red])
    after = solid([blue, blue, grey, grey])
    prompts = ["a green square", "a green square", "two red circles", "two red circles"]
    before_after_grid(before, after, tmp_path / "grid.png", prompts=prompts)
    image = Image.open(tmp_path / "grid.png")
    assert image.mode == "RGB"  # true colour: the demo's colours survive exactly
    pixels = np.asarray(image)
    # Two rows of 8-pixel images under a header; each row has 2 images before and 2 after.
    assert pixels.shape[0] == 20 + 2 * 8
    rows = {colour: np.argwhere((pixels == colour).all(-1)) for colour in (green, red, blue, grey)}
    assert {int(r) for r in rows[green][:, 0]} == set(range(20, 28))  # first prompt: first row
    assert {int(r) for r in rows[red][:, 0]} == set(range(28, 36))
    assert rows[green][:, 1].max() < rows[blue][:, 1].min()  # before on the left of after
    assert len(rows[green]) == len(rows[blue]) == 2 * 8 * 8
    # The label column holds text (dark pixels) left of the images.
    label = pixels[20:36, : rows[green][:, 1].min()]
    assert (label.sum(-1) < 200).any()


def test_labelled_grid_needs_one_prompt_per_image(tmp_path):
    media = solid([(0, 0, 0)] * 3)
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        before_after_grid(media, media, tmp_path / "g.png", prompts=["a", "b"])
