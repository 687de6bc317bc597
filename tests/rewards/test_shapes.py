"""dance-shapes: the scene grammar, the renderer, the pixel analysis and the ``shapes`` reward."""

from __future__ import annotations

import random
import re
import time
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dance.config import build
from dance.errors import ConfigError
from dance.interfaces import Prompt, Runtime
from dance.registry import load_registry
from dance.testing.reward_contract import RewardContract
from dance_shapes import (
    BACKGROUND,
    COLORS,
    COUNTS,
    POSITIONS,
    SHAPES,
    SceneSpec,
    ShapesConfig,
    ShapesReward,
    all_specs,
    analyze,
    classify_pixels,
    random_spec,
    render,
    render_tensor,
)
from dance_shapes.analysis import NO_COLOR, label_components, template_iou
from dance_shapes.scenes import REGIONS, _fallback_layout, _gap, layout

SPECS = all_specs()
GT_SEEDS = (0, 1, 2)
SIZES = (64, 32)


def _reward(**options: object) -> ShapesReward:
    return ShapesReward(build(ShapesConfig, options), Runtime())


def _score(
    images: torch.Tensor, specs: list[SceneSpec], **options: object
) -> dict[str, torch.Tensor]:
    return _reward(**options).score(images, [Prompt(s.prompt) for s in specs])


def _scenes(
    render_specs: list[SceneSpec], size: int, seeds: tuple[int, ...] = GT_SEEDS
) -> torch.Tensor:
    return torch.stack([render_tensor(s, size, seed) for seed in seeds for s in render_specs])


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = 2
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(images, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def _other(values: tuple, value: object, k: int = 1) -> object:
    return values[(values.index(value) + k) % len(values)]


# -- grammar --------------------------------------------------------------------------------------


def test_constants() -> None:
    assert COLORS == {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (235, 200, 30),
    }
    assert BACKGROUND == (245, 245, 245)
    assert SHAPES == ("circle", "square", "triangle")
    assert COUNTS == {1: "a", 2: "two", 3: "three"}
    assert POSITIONS == ("", "on the left", "on the right", "at the top", "at the bottom")


def test_prompts() -> None:
    assert SceneSpec(1, "red", "circle", "").prompt == "a red circle"
    assert SceneSpec(2, "blue", "square", "on the left").prompt == "two blue squares on the left"
    assert (
        SceneSpec(3, "yellow", "triangle", "at the top").prompt
        == "three yellow triangles at the top"
    )


def test_all_specs_and_round_trip() -> None:
    assert len(SPECS) == 180
    assert all_specs() == SPECS  # deterministic order
    assert SPECS[0] == SceneSpec(1, "red", "circle", "")
    assert SPECS[-1] == SceneSpec(3, "yellow", "triangle", "at the bottom")
    prompts = [s.prompt for s in SPECS]
    assert len(set(prompts)) == 180
    for spec in SPECS:
        assert SceneSpec.parse(spec.prompt) == spec
    # Case, extra spaces and a final full stop are forgiven.
    parsed = SceneSpec.parse("  Two Blue SQUARES   on the left. ")
    assert parsed == SceneSpec(2, "blue", "square", "on the left")


@pytest.mark.parametrize(
    "prompt",
    [
        "a photo of object number 0",
        "",
        "a red",
        "two red circle",
        "a red circles",
        "four red circles",
        "one red circle",
        "a purple circle",
        "a red hexagon",
        "a red circle in the middle",
        "a red circle on the left side",
    ],
)
def test_parse_rejects_prompts_outside_the_grammar(prompt: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(prompt))):
        SceneSpec.parse(prompt)


def test_spec_validates_fields() -> None:
    for bad in [(4, "red", "circle", ""), (1, "pink", "circle", ""), (1, "red", "star", "")]:
        with pytest.raises(ValueError):
            SceneSpec(*bad)
    with pytest.raises(ValueError):
        SceneSpec(1, "red", "circle", "in the middle")


def test_random_spec() -> None:
    drawn = [random_spec(random.Random(7)) for _ in range(3)]
    assert drawn[0] == drawn[1] == drawn[2]
    rng = random.Random(0)
    seen = {random_spec(rng) for _ in range(3000)}
    assert seen == set(SPECS)
    gen = np.random.default_rng(0)
    assert {random_spec(gen) for _ in range(3000)} == set(SPECS)


# -- renderer -------------------------------------------------------------------------------------


def test_render_is_deterministic() -> None:
    spec = SceneSpec(3, "green", "triangle", "on the right")
    first = render(spec, 64, seed=5)
    assert first.mode == "RGB" and first.size == (64, 64)
    assert render(spec, 64, seed=5).tobytes() == first.tobytes()
    assert render(spec, 64, seed=6).tobytes() != first.tobytes()
    assert render(spec, 32, seed=5).size == (32, 32)
    tensor = render_tensor(spec, 64, seed=5)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 64, 64)
    expected = torch.from_numpy(np.asarray(first).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor, expected)


def test_render_uses_only_the_colour_and_the_background() -> None:
    for spec in SPECS[::7]:
        pixels = np.asarray(render(spec, 64, seed=1)).reshape(-1, 3)
        colors = {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}
        assert colors == {BACKGROUND, COLORS[spec.color]}, spec


def _check_layout(spec: SceneSpec, size: int, boxes: list[tuple[int, int, int]]) -> None:
    assert len(boxes) == spec.count, (spec, size, boxes)
    gap = _gap(size)
    for i, (x0, y0, side) in enumerate(boxes):
        assert 0.15 * size <= side <= 0.27 * size, (spec, size, boxes)
        assert x0 >= 1 and y0 >= 1 and x0 + side <= size - 1 and y0 + side <= size - 1
        region = REGIONS[spec.position]
        if region is not None:
            axis, low, high = region
            centre = (x0 + side / 2, y0 + (2 * side / 3 if spec.shape == "triangle" else side / 2))
            assert low * size <= centre[axis] <= high * size, (spec, size, boxes)
        for ox, oy, oside in boxes[i + 1 :]:
            apart_x = ox - (x0 + side) >= gap or x0 - (ox + oside) >= gap
            apart_y = oy - (y0 + side) >= gap or y0 - (oy + oside) >= gap
            assert apart_x or apart_y, (spec, size, boxes)


def test_layouts_respect_regions_margins_and_gaps() -> None:
    for size in (64, 32):
        for seed in range(6):
            for spec in SPECS:
                _check_layout(spec, size, layout(spec, size, seed))


def test_fallback_layout_is_valid() -> None:
    # Rejection sampling practically never falls back; the fallback must still be a valid scene.
    for size in (16, 32, 64, 100):
        for spec in SPECS:
            _check_layout(spec, size, _fallback_layout(spec, size))


def test_render_rejects_tiny_images() -> None:
    with pytest.raises(ValueError, match="at least"):
        render(SPECS[0], size=8)


# -- analysis -------------------------------------------------------------------------------------


def _bfs_labels(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """Reference 8-connected components of one [H, W] mask, as sets of pixels."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    parts = []
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or seen[y, x]:
                continue
            part, queue = set(), deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                part.add((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if (
                            0 <= ny < height
                            and 0 <= nx < width
                            and mask[ny, nx]
                            and not seen[ny, nx]
                        ):
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            parts.append(part)
    return parts


def test_label_components_matches_bfs() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((6, 24, 20)) < np.array([0.2, 0.35, 0.45, 0.55, 0.6, 0.9])[:, None, None]
    # A serpentine: one long thin component, where plain min-propagation needs many rounds.
    masks[0] = False
    masks[0, ::2, 1:-1] = True
    masks[0, 1::4, -2] = masks[0, 3::4, 1] = True
    labels = label_components(masks)
    for b in range(masks.shape[0]):
        got = {}
        for y, x in zip(*np.nonzero(masks[b]), strict=True):
            got.setdefault(labels[b, y, x], set()).add((y, x))
        assert sorted(map(sorted, got.values())) == sorted(map(sorted, _bfs_labels(masks[b])))
        assert (labels[b][~masks[b]] == -1).all()
    assert len(_bfs_labels(masks[0])) == 1


def test_label_components_keeps_images_apart_and_joins_diagonals() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 3, :] = True  # bottom row of image 0
    masks[1, 0, :] = True  # top row of image 1: adjacent in memory, not in space
    masks[1, 2, 1] = masks[1, 3, 2] = True  # diagonal neighbours: one component
    labels = label_components(masks)
    assert labels[0, 3, 0] != labels[1, 0, 0]
    assert labels[1, 2, 1] == labels[1, 3, 2] != labels[1, 0, 0]


def test_classify_pixels() -> None:
    names = list(COLORS)
    palette = [np.array(c) / 255 for c in COLORS.values()]
    bg = np.array(BACKGROUND) / 255
    pixels = []
    expected = []
    for k, c in enumerate(palette):
        for alpha, label in [(1.0, k), (0.8, k), (0.55, k), (0.45, NO_COLOR), (0.2, NO_COLOR)]:
            pixels.append(alpha * c + (1 - alpha) * bg)
            expected.append(label)
    # Background, black, mid grey, white and a colour between red and yellow (orange).
    for p in [bg, (0, 0, 0), (0.5, 0.5, 0.5), (1, 1, 1), (0.95, 0.5, 0.1)]:
        pixels.append(np.array(p, dtype=float))
        expected.append(NO_COLOR)
    images = torch.tensor(np.array(pixels), dtype=torch.float32).T.reshape(1, 3, 1, -1)
    got = classify_pixels(images)[0, 0].tolist()
    assert got == expected, [names[g] if g >= 0 else "-" for g in got]
    # No blend of a colour with the background ever reads as another colour (no halos).
    alphas = np.linspace(0, 1, 101)
    for k, c in enumerate(palette):
        blends = alphas[:, None] * c + (1 - alphas[:, None]) * bg
        labels = classify_pixels(blends.T.reshape(1, 3, 1, -1).astype(np.float32))
        assert set(labels.ravel().tolist()) <= {k, NO_COLOR}, names[k]


def test_analysis_measures_rendered_shapes() -> None:
    specs = [SceneSpec(1, "blue", shape, "") for shape in SHAPES]
    images = torch.stack([render_tensor(s, 64, seed=4) for s in specs])
    results = analyze(images, [s.color for s in specs])
    for spec, result in zip(specs, results, strict=True):
        ((x0, y0, side),) = layout(spec, 64, seed=4)
        (comp,) = result.components
        assert comp.shape == spec.shape
        assert comp.bbox == (x0, y0, x0 + side, y0 + side)
        ideal = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[spec.shape]
        assert abs(comp.fill - ideal) < 0.06, (spec.shape, comp.fill)
        assert abs(comp.slope - (1.0 if spec.shape == "triangle" else 0.0)) < 0.1
        assert abs(comp.centroid[0] - (x0 + side / 2)) < 0.6
        assert result.color_pixels["blue"] == comp.area
        assert sum(result.color_pixels.values()) == comp.area
    square_side = layout(specs[1], 64, seed=4)[0][2]
    assert results[1].components[0].area == square_side**2


def test_template_iou_of_ideal_and_drawn_shapes() -> None:
    # Hand-made regions in a 4x4 box: the full box, and the centre-inclusion ellipse / triangle.
    full = np.ones((4, 4), dtype=bool)
    assert template_iou(full) == {"square": 1.0, "circle": 12 / 16, "triangle": 8 / 16}
    # Pixel centres at 1/8, 3/8, ... of the box: the upward triangle keeps |x| <= y / 2, so rows
    # of 0, 2, 2, 4 pixels (8 in all) lie inside it.
    triangle = np.zeros((4, 4), dtype=bool)
    triangle[1, 1:3] = triangle[2, 1:3] = triangle[3, :] = True
    assert template_iou(triangle)["triangle"] == 1.0
    assert template_iou(triangle)["square"] == 8 / 16
    # Rendered shapes at 64 px match their own template best, nearly exactly.
    specs = [SceneSpec(1, "red", shape, "") for shape in SHAPES]
    images = torch.stack([render_tensor(s, 64, seed=2) for s in specs])
    for spec, result in zip(specs, analyze(images, ["red"] * 3), strict=True):
        (comp,) = result.components
        assert comp.template_iou[spec.shape] >= 0.9, (spec.shape, comp.template_iou)
        assert max(comp.template_iou, key=comp.template_iou.get) == spec.shape


def test_fidelity_grades_what_the_shape_check_cannot() -> None:
    """A square with rounded corners is still classified a square, but fidelity sees it."""
    image = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).view(3, 1, 1).repeat(1, 64, 64)
    red = torch.tensor(COLORS["red"], dtype=torch.float32).div(255).view(3, 1, 1)
    sharp, rounded = image.clone(), image.clone()
    sharp[:, 20:40, 20:40] = red
    rounded[:, 20:40, 20:40] = red
    for y, x in [(20, 20), (20, 39), (39, 20), (39, 39), (20, 21), (21, 20), (39, 38), (38, 39)]:
        rounded[:, y, x] = image[:, 0, 0]
    out = _score(torch.stack([sharp, rounded]), [SceneSpec(1, "red", "square", "")] * 2)
    assert out["shape"].tolist() == [1.0, 1.0]
    assert out["fidelity"][0] == 1.0 and 0.97 < out["fidelity"][1] < 1.0


def test_analysis_drops_specks_and_reads_every_colour() -> None:
    image = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).view(3, 1, 1).repeat(1, 64, 64)
    red = torch.tensor(COLORS["red"], dtype=torch.float32).div(255).view(3, 1, 1)
    image[:, 10:20, 10:20] = red  # 100 px: a shape
    image[:, 40:44, 40:44] = red  # 16 px < 1.5% of 4096: a speck
    (result,) = analyze(image[None], ["red"])
    assert len(result.components) == 1 and result.components[0].area == 100
    assert result.color_pixels["red"] == 116
    (loose,) = analyze(image[None], ["red"], min_area=0.001)
    assert [c.area for c in loose.components] == [100, 16]
    (green,) = analyze(image[None], ["green"])
    assert green.components == [] and green.color_pixels["red"] == 116
    with pytest.raises(ValueError, match="unknown colours"):
        analyze(image[None], ["purple"])


# -- reward ---------------------------------------------------------------------------------------


def test_ground_truth_scenes_succeed() -> None:
    success, score = [], []
    for size in SIZES:
        out = _score(_scenes(SPECS, size), SPECS * len(GT_SEEDS))
        success.append(out["success"])
        score.append(out["score"])
    success_rate = torch.cat(success).mean().item()
    mean_score = torch.cat(score).mean().item()
    assert success_rate >= 0.97, success_rate
    assert mean_score >= 0.95, mean_score
    fidelity = torch.cat([_score(_scenes(SPECS, 64), SPECS * len(GT_SEEDS))["fidelity"]])
    assert fidelity.mean() >= 0.9, fidelity.mean()


@pytest.mark.parametrize("size", SIZES)
def test_noisy_and_blurred_ground_truth_still_succeeds(size: int) -> None:
    clean = _scenes(SPECS, size, seeds=(3,))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = (clean + 0.03 * noise).clamp(0, 1)
    # sigma 1 rounds a 6-pixel square's corners to a fill near 0.9: still a square.
    cases = [("noise", noisy), ("blur", _blur(clean, sigma=0.6)), ("blur 1", _blur(clean, 1.0))]
    for name, images in cases:
        rate = _score(images, SPECS)["success"].mean().item()
        assert rate >= 0.9, (name, size, rate)


def _contradiction(change: str, size: int) -> tuple[list[SceneSpec], dict[str, torch.Tensor]]:
    """Score scenes rendered with one attribute changed against the original prompts."""
    asked, shown = [], []
    for spec in SPECS:
        if change == "color":
            other = SceneSpec(
                spec.count, _other(tuple(COLORS), spec.color), spec.shape, spec.position
            )
        elif change == "shape":
            other = SceneSpec(spec.count, spec.color, _other(SHAPES, spec.shape), spec.position)
        elif change == "count":
            other = SceneSpec(_other((1, 2, 3), spec.count), spec.color, spec.shape, spec.position)
        else:
            if not spec.position:
                continue  # "anywhere" has no opposite
            opposite = {
                "on the left": "on the right",
                "on the right": "on the left",
                "at the top": "at the bottom",
                "at the bottom": "at the top",
            }[spec.position]
            other = SceneSpec(spec.count, spec.color, spec.shape, opposite)
        asked.append(spec)
        shown.append(other)
    images = _scenes(shown, size, seeds=(0, 1))
    return asked, _score(images, asked * 2)


@pytest.mark.parametrize("size", SIZES)
def test_wrong_colour_scores_zero(size: int) -> None:
    _, out = _contradiction("color", size)
    assert (out["color"] == 0).all()
    assert (out["success"] == 0).all()
    assert out["score"].max() == 0.0  # nothing of the requested colour: no check passes


@pytest.mark.parametrize("size", SIZES)
def test_wrong_shape_scores_low(size: int) -> None:
    _, out = _contradiction("shape", size)
    assert out["shape"].mean() <= 0.02, out["shape"].mean()
    assert out["success"].mean() <= 0.01
    assert out["color"].mean() >= 0.99 and out["count"].mean() >= 0.97  # only the shape is wrong
    # the graded fidelity drops with it (a circle is the nearest wrong shape to a square: 0.79
    # when large; small shapes are staircases, so the margin shrinks at 32 px)
    right = _score(_scenes(SPECS, size, seeds=(0, 1)), SPECS * 2)["fidelity"]
    assert out["fidelity"].mean() <= 0.65 and right.mean() >= 0.95, (out["fidelity"], right)


@pytest.mark.parametrize("size", SIZES)
def test_wrong_count_scores_low(size: int) -> None:
    _, out = _contradiction("count", size)
    assert (out["count"] <= 0.5).all()
    assert out["count"].mean() <= 0.5
    assert out["success"].mean() <= 0.01
    assert out["shape"].mean() >= 0.97


@pytest.mark.parametrize("size", SIZES)
def test_wrong_position_scores_low(size: int) -> None:
    asked, out = _contradiction("position", size)
    assert len(asked) == 144
    assert out["position"].mean() <= 0.02, out["position"].mean()
    assert out["success"].mean() <= 0.01
    assert out["shape"].mean() >= 0.97


def test_blank_and_stray_colours() -> None:
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).view(1, 3, 1, 1)
    out = _score(blank.expand(len(SPECS), 3, 64, 64), SPECS)
    assert (out["success"] == 0).all()
    for name in ("color", "count", "shape", "position"):
        assert (out[name] == 0).all(), name
    assert out["score"].max() == 0.0  # an empty picture earns nothing
    # The right scene plus a shape of another colour: the colour check loses credit.
    spec = SceneSpec(1, "red", "square", "on the left")
    intruder = SceneSpec(1, "blue", "circle", "on the right")
    scene = render_tensor(spec, 64, 0)
    extra = render_tensor(intruder, 64, 0)
    mixed = torch.where((extra != scene[:, :1, :1]).any(0, keepdim=True), extra, scene)
    out = _score(torch.stack([scene, mixed]), [spec, spec])
    assert out["success"].tolist() == [1.0, 0.0]
    assert 0.2 < out["color"][1] < 0.9
    assert out["count"][1] == 1 and out["shape"][1] == 1


def test_all_black_and_random_images_fail() -> None:
    images = torch.cat(
        [
            torch.zeros(4, 3, 64, 64),
            torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
        ]
    )
    out = _score(images, SPECS[:8])
    assert (out["success"] == 0).all()
    assert out["score"].max() <= 0.5


def test_components_and_score_are_consistent() -> None:
    mixed = SPECS[::5]
    images = torch.stack([render_tensor(_other_spec(s, i), 32, i) for i, s in enumerate(mixed)])
    out = _score(images, mixed)
    checks = torch.stack([out[k] for k in ("color", "count", "shape", "position")])
    torch.testing.assert_close(out["score"], checks.mean(0))
    assert torch.equal(out["success"], (checks == 1).all(0).float())
    assert 0 < out["success"].mean() < 1  # the mix has both successes and failures
    assert ((checks >= 0) & (checks <= 1)).all()


def _other_spec(spec: SceneSpec, i: int) -> SceneSpec:
    """Every third sample keeps its spec; the others change the colour or the shape."""
    if i % 3 == 0:
        return spec
    if i % 3 == 1:
        return SceneSpec(spec.count, _other(tuple(COLORS), spec.color), spec.shape, spec.position)
    return SceneSpec(spec.count, spec.color, _other(SHAPES, spec.shape), spec.position)


def test_prompts_outside_the_grammar_raise() -> None:
    images = _scenes(SPECS[:2], 32, seeds=(0,))
    with pytest.raises(ValueError, match="a photo of a cat"):
        _reward().score(images, [Prompt(SPECS[0].prompt), Prompt("a photo of a cat")])
    with pytest.raises(ValueError, match="prompts"):
        _reward().score(images, [Prompt(SPECS[0].prompt)])
    with pytest.raises(ValueError, match="3 channels"):
        _reward().score(images[:, :1], [Prompt(s.prompt) for s in SPECS[:2]])


def test_empty_batch() -> None:
    for media in (torch.zeros(0, 3, 32, 32), torch.zeros(0, 3, 2, 32, 32)):
        out = _reward().score(media, [])
        assert list(out) == list(ShapesReward.components)
        assert all(v.shape == (0,) and v.dtype == torch.float32 for v in out.values())


def test_non_finite_pixels_give_nan_for_that_sample_only() -> None:
    images = _scenes(SPECS[:2], 32, seeds=(0,))
    images[0, 1, 3, 3] = float("nan")
    out = _score(images, SPECS[:2])
    for name, value in out.items():
        assert torch.isnan(value[0]), name
        assert value[1] == 1, name


def test_bf16_input() -> None:
    images = _scenes(SPECS[:6], 64, seeds=(0,))
    out = _score(images.bfloat16(), SPECS[:6])
    assert out["score"].dtype == torch.float32
    assert torch.equal(out["success"], _score(images.bfloat16().float(), SPECS[:6])["success"])
    assert (out["success"] == 1).all()


def test_video_frame_rule() -> None:
    spec = SceneSpec(2, "green", "circle", "at the bottom")
    good = render_tensor(spec, 32, 0)
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 32)
    # 5 frames, 3 scored: 0, 2 and 4. Frames 1 and 3 are blank, so scoring them would show.
    video = torch.stack([good, blank, good, blank, good], dim=1)  # [3, 5, H, W]
    second = video.clone()
    second[:, 2] = blank
    out = _score(torch.stack([video, second]), [spec, spec], video_frames=3)
    torch.testing.assert_close(out["success"], torch.tensor([1.0, 2 / 3]))
    torch.testing.assert_close(out["count"], torch.tensor([1.0, 2 / 3]))
    every = _score(video[None], [spec], video_frames=50)
    torch.testing.assert_close(every["success"], torch.tensor([3 / 5]))


def test_options_change_the_outcome() -> None:
    spec = SceneSpec(1, "red", "square", "")
    image = render_tensor(spec, 64, 0)[None]
    assert _score(image, [spec])["success"].item() == 1
    # A minimum area larger than the square leaves no component.
    assert _score(image, [spec], min_area=0.2)["count"].item() == 0
    # A darker red (off-palette by 0.3) counts only with a looser colour threshold.
    dark = image.clone()
    mask = (image != image[:, :, :1, :1]).any(1, keepdim=True)
    dark = torch.where(mask, image - torch.tensor([0.3, 0.0, 0.0]).view(1, 3, 1, 1), image)
    assert _score(dark, [spec])["color"].item() == 0
    assert _score(dark, [spec], color_threshold=0.35)["success"].item() == 1


def test_scoring_speed() -> None:
    images = _scenes(SPECS[:32], 64, seeds=(0,))
    reward = _reward()
    prompts = [Prompt(s.prompt) for s in SPECS[:32]]
    reward.score(images, prompts)
    best = min(_timed(reward, images, prompts) for _ in range(3))
    assert best < 0.5, best


def _timed(reward: ShapesReward, images: torch.Tensor, prompts: list[Prompt]) -> float:
    start = time.perf_counter()
    reward.score(images, prompts)
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "values", [{"min_area": 0.0}, {"min_area": 1.0}, {"color_threshold": 0}, {"video_frames": 0}]
)
def test_config_ranges(values: dict) -> None:
    with pytest.raises(ConfigError):
        build(ShapesConfig, values)


def test_declarations_and_defaults() -> None:
    assert ShapesReward.name == "shapes"
    assert ShapesReward.components == (
        "score",
        "success",
        "color",
        "count",
        "shape",
        "position",
        "fidelity",
    )
    assert ShapesReward.modalities == ("image", "video")
    config = ShapesConfig()
    assert (config.min_area, config.color_threshold, config.video_frames) == (0.015, 0.25, 8)


def test_registered_through_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANCE_PLUGINS", "shapes")
    registry = load_registry()
    assert registry.plugins["shapes"].loaded, registry.plugins["shapes"].error
    assert registry.get("reward", "shapes") is ShapesReward
    reward = registry.create("reward", "shapes", {"min_area": 0.02}, Runtime())
    assert reward.config.min_area == 0.02


class TestShapesContract(RewardContract):
    """The contract, on rendered scenes (some matching their prompts, some not) with noise."""

    @pytest.fixture
    def reward(self) -> ShapesReward:
        return _reward(video_frames=3)

    def _specs(self, batch: int) -> list[SceneSpec]:
        return [SPECS[(37 * i + 11) % len(SPECS)] for i in range(batch)]

    def make_prompts(self, batch: int) -> list[Prompt]:
        return [Prompt(s.prompt) for s in self._specs(batch)]

    def make_media(
        self, reward: ShapesReward, modality: str, batch: int, shape: tuple, seed: int
    ) -> torch.Tensor:
        size = shape[-1]
        frames = 1 if modality == "image" else shape[1]
        samples = []
        for i, spec in enumerate(self._specs(batch)):
            shown = _other_spec(spec, i)
            video = torch.stack(
                [render_tensor(shown, size, seed * 10 + f) for f in range(frames)], 1
            )
            samples.append(video[:, 0] if modality == "image" else video)
        media = torch.stack(samples)
        noise = torch.randn(media.shape, generator=torch.Generator().manual_seed(seed))
        return (media + 0.03 * noise).clamp(0, 1).to(reward.runtime.device)
