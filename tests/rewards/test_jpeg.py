"""dance-jpeg: DDPO's JPEG (in)compressibility rewards, checked against Pillow directly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dance.config import build
from dance.errors import ConfigError
from dance.interfaces import Prompt, Runtime
from dance.registry import load_registry
from dance.testing.reward_contract import RewardContract
from dance_jpeg import JpegCompressibility, JpegConfig, JpegIncompressibility, to_uint8


def _size_kb(image: torch.Tensor, quality: int = 95) -> float:
    """Independent reference: DDPO's conversion done in numpy (fp32), encoded with Pillow."""
    scaled = image.float().numpy() * np.float32(255)
    array = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
    return len(buffer.getvalue()) / 1000


def _noise(batch: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    return torch.tensor([_size_kb(image, quality) for image in images], dtype=torch.float32)


def _prompts(n: int) -> list[Prompt]:
    return [Prompt("a cat")] * n


def _reward(cls: type, **options: object):
    return cls(build(JpegConfig, options), Runtime())


class TestIncompressibilityContract(RewardContract):
    @pytest.fixture
    def reward(self) -> JpegIncompressibility:
        return _reward(JpegIncompressibility)


class TestCompressibilityContract(RewardContract):
    @pytest.fixture
    def reward(self) -> JpegCompressibility:
        return _reward(JpegCompressibility, video_frames=2)


def test_sizes_match_pillow() -> None:
    images = _noise(3, 3, 24, 40)
    images[1] = 0.5  # flat gray
    out = _reward(JpegIncompressibility).score(images, _prompts(3))
    assert list(out) == ["incompressibility"]
    assert torch.equal(out["incompressibility"], _kb(images))


def test_quality_option_is_used() -> None:
    images = _noise(2, 3, 32, 32, seed=1)
    low = _reward(JpegIncompressibility, quality=30).score(images, _prompts(2))["incompressibility"]
    high = _reward(JpegIncompressibility).score(images, _prompts(2))["incompressibility"]
    assert torch.equal(low, _kb(images, 30))
    assert (low < high).all()


def test_flat_image_compresses_better_than_noise() -> None:
    images = torch.cat([torch.full((1, 3, 64, 64), 0.3), _noise(1, 3, 64, 64)])
    comp = _reward(JpegCompressibility).score(images, _prompts(2))["compressibility"]
    incomp = _reward(JpegIncompressibility).score(images, _prompts(2))["incompressibility"]
    assert comp[0] > comp[1]
    assert incomp[0] < incomp[1]
    assert torch.equal(comp, -incomp)


def test_uint8_conversion_follows_ddpo() -> None:
    # x * 255 lands exactly on .5 in fp32 for these; DDPO's round() goes half to even, which
    # neither truncation ([0, 1, 2, 127, 254]) nor half-up ([1, 2, 3, 128, 255]) reproduces.
    ties = torch.tensor([0.5, 1.5, 2.5, 127.5, 254.5]) / 255
    assert to_uint8(ties).tolist() == [0, 2, 2, 128, 254]
    assert to_uint8(torch.tensor([-0.5, 0.4 / 255, 0.6 / 255, 1.0, 3.0])).tolist() == [
        0,
        0,
        1,
        255,
        255,
    ]
    # bf16 input converts as its exact fp32 value does.
    half = torch.tensor([0.3, 0.7, 0.9]).bfloat16()
    assert torch.equal(to_uint8(half), to_uint8(half.float()))


def test_out_of_range_pixels_are_clamped() -> None:
    images = _noise(1, 3, 16, 16) * 3 - 1
    got = _reward(JpegIncompressibility).score(images, _prompts(1))["incompressibility"]
    assert torch.equal(got, _kb(images.clamp(0, 1)))


def test_grayscale_and_bad_channels() -> None:
    gray = _noise(1, 1, 16, 16)
    got = _reward(JpegIncompressibility).score(gray, _prompts(1))["incompressibility"]
    buffer = io.BytesIO()
    array = np.round(gray[0, 0].numpy() * np.float32(255)).astype(np.uint8)
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    assert torch.equal(got, torch.tensor([len(buffer.getvalue()) / 1000], dtype=torch.float32))
    with pytest.raises(ValueError, match="1 or 3"):
        _reward(JpegIncompressibility).score(_noise(1, 4, 8, 8), _prompts(1))


def test_non_finite_pixels_give_nan_for_that_sample_only() -> None:
    images = _noise(2, 3, 16, 16)
    images[0, 1, 3, 3] = float("nan")
    out = _reward(JpegCompressibility).score(images, _prompts(2))["compressibility"]
    assert torch.isnan(out[0])
    assert torch.equal(out[1:], -_kb(images[1:]))


def test_bf16_input_scores_like_its_fp32_value() -> None:
    images = _noise(2, 3, 16, 16).bfloat16()
    out = _reward(JpegIncompressibility).score(images, _prompts(2))["incompressibility"]
    assert out.dtype == torch.float32
    assert torch.equal(out, _kb(images.float()))


def test_video_frame_rule() -> None:
    # 5 frames, 3 scored: frames 0, 2, 4. Odd frames are flat so that scoring them would show.
    video = _noise(2, 3, 5, 32, 32, seed=3)
    video[:, :, 1::2] = 0.5
    reward = _reward(JpegIncompressibility, video_frames=3)
    got = reward.score(video, _prompts(2))["incompressibility"]
    expected = [float(np.mean([_size_kb(video[b, :, f]) for f in (0, 2, 4)])) for b in range(2)]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0)
    # Asking for more frames than there are scores every frame.
    every = _reward(JpegIncompressibility, video_frames=50).score(video, _prompts(2))
    expected_all = [float(np.mean([_size_kb(video[b, :, f]) for f in range(5)])) for b in range(2)]
    torch.testing.assert_close(
        every["incompressibility"], torch.tensor(expected_all), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("values", [{"quality": 0}, {"quality": 101}, {"video_frames": 0}])
def test_config_ranges(values: dict) -> None:
    with pytest.raises(ConfigError):
        build(JpegConfig, values)


def test_defaults_follow_ddpo() -> None:
    config = JpegConfig()
    assert (config.quality, config.video_frames) == (95, 8)


def test_registered_through_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANCE_PLUGINS", "jpeg")
    registry = load_registry()
    assert registry.plugins["jpeg"].loaded, registry.plugins["jpeg"].error
    assert registry.get("reward", "jpeg-compressibility") is JpegCompressibility
    assert registry.get("reward", "jpeg-incompressibility") is JpegIncompressibility
    reward = registry.create("reward", "jpeg-compressibility", {"quality": 80}, Runtime())
    assert reward.config.quality == 80
