"""dance-binary: DanceGRPO's sparse binary reward over another registered reward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

import dance
import dance.registry
from dance.config import build, option
from dance.errors import ConfigError, UsageError
from dance.interfaces import Prompt, Reward, RewardOutput, Runtime
from dance.testing.reward_contract import RewardContract
from dance_binary import BinaryConfig, BinaryReward
from dance_jpeg import JpegIncompressibility


@dataclass
class _MeanConfig:
    scale: float = option(1.0, "Multiplies the mean.")


class _PixelMean(Reward):
    """A tiny image-only reward: the mean pixel (times ``scale``) and the max pixel."""

    name = "test-pixel-mean"
    config_class = _MeanConfig
    modalities = ("image",)
    components = ("mean", "max")

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        flat = media.float().flatten(1)
        return {"mean": flat.mean(dim=1) * self.config.scale, "max": flat.amax(dim=1)}


class _TestPlugin:
    @dance.hookimpl
    def register_rewards(self, register) -> None:
        register(_PixelMean)


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> dance.registry.Registry:
    # Only the two plugins under test plus the test reward, whatever else is installed.
    monkeypatch.setenv("DANCE_PLUGINS", "binary,jpeg")
    registry = dance.registry.load_registry(extra={"binary-tests": _TestPlugin()})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


def _binary(**options: object) -> BinaryReward:
    return dance.registry.get_registry().create("reward", "binary", options, Runtime())


def _prompts(n: int) -> list[Prompt]:
    return [Prompt("a dog")] * n


def _flat(*levels: float) -> torch.Tensor:
    return torch.stack([torch.full((3, 4, 4), level) for level in levels])


class TestBinaryOverImageRewardContract(RewardContract):
    @pytest.fixture
    def reward(self) -> BinaryReward:
        return _binary(reward="test-pixel-mean", threshold=0.5)


class TestBinaryOverJpegContract(RewardContract):
    @pytest.fixture
    def reward(self) -> BinaryReward:
        return _binary(reward="jpeg-incompressibility", threshold=1.0, options={"video_frames": 2})


def test_registered_through_entry_point(registry: dance.registry.Registry) -> None:
    assert registry.plugins["binary"].loaded, registry.plugins["binary"].error
    assert registry.get("reward", "binary") is BinaryReward


def test_thresholds_the_first_component_by_default() -> None:
    reward = _binary(reward="test-pixel-mean", threshold=0.5)
    out = reward.score(_flat(0.2, 0.5, 0.7, 1.0), _prompts(4))
    assert list(out) == ["binary", "score"]
    # Strictly greater than the threshold: 0.5 itself gives 0.
    assert out["binary"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out["binary"].dtype == torch.float32
    torch.testing.assert_close(out["score"], torch.tensor([0.2, 0.5, 0.7, 1.0]))


def test_component_threshold_and_options_reach_the_underlying_reward() -> None:
    media = _flat(0.1, 0.3)
    media[0, 0, 0, 0] = 0.9  # max 0.9, mean still low
    by_max = _binary(reward="test-pixel-mean", component="max", threshold=0.8)
    assert by_max.score(media, _prompts(2))["binary"].tolist() == [1.0, 0.0]
    scaled = _binary(reward="test-pixel-mean", threshold=0.5, options={"scale": 2.0})
    out = scaled.score(media, _prompts(2))
    assert out["binary"].tolist() == [0.0, 1.0]  # means 0.15 and 0.3, doubled
    assert isinstance(scaled.inner, _PixelMean) and scaled.inner.config.scale == 2.0


def test_negative_threshold() -> None:
    reward = _binary(reward="test-pixel-mean", threshold=-0.25, options={"scale": -1.0})
    assert reward.score(_flat(0.1, 0.5), _prompts(2))["binary"].tolist() == [1.0, 0.0]


def test_nan_stays_nan_in_both_components() -> None:
    media = _flat(0.9, 0.9, 0.1)
    media[1, 2, 1, 1] = float("nan")
    out = _binary(reward="test-pixel-mean", threshold=0.5).score(media, _prompts(3))
    assert torch.isnan(out["score"][1]) and torch.isnan(out["binary"][1])
    assert out["binary"][[0, 2]].tolist() == [1.0, 0.0]


def test_over_a_real_reward_matches_it() -> None:
    media = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    media[1] = 0.5
    sizes = JpegIncompressibility(build(JpegIncompressibility.config_class), Runtime()).score(
        media, _prompts(3)
    )["incompressibility"]
    threshold = float(sizes.median())
    out = _binary(reward="jpeg-incompressibility", threshold=threshold).score(media, _prompts(3))
    assert torch.equal(out["score"], sizes)
    assert torch.equal(out["binary"], (sizes > threshold).float())


def test_modalities_follow_the_underlying_reward() -> None:
    # The class declares every modality; each instance narrows it to its underlying reward's.
    assert BinaryReward.modalities == ("image", "video")
    image_only = _binary(reward="test-pixel-mean")
    assert image_only.accepts("image") and not image_only.accepts("video")
    with pytest.raises(ValueError, match="accepts image media, got video"):
        image_only.score(torch.rand(2, 3, 2, 4, 4), _prompts(2))
    both = _binary(reward="jpeg-incompressibility")
    assert both.accepts("image") and both.accepts("video")
    assert BinaryReward.modalities == ("image", "video")  # the class was not changed


def test_score_carries_no_gradient() -> None:
    media = _flat(0.2, 0.8).requires_grad_(True)
    out = _binary(reward="test-pixel-mean").score(media, _prompts(2))
    assert not out["score"].requires_grad and not out["binary"].requires_grad


def test_missing_reward_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs the name of the reward"):
        _binary()
    with pytest.raises(ConfigError, match="needs the name"):
        build(BinaryConfig, {"threshold": 1.0})


def test_unknown_reward_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown reward 'test-pixel-maen'.*test-pixel-mean"):
        _binary(reward="test-pixel-maen")


def test_unknown_component_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no component 'maen'.*Did you mean 'mean'"):
        _binary(reward="test-pixel-mean", component="maen")


def test_bad_options_for_the_underlying_reward() -> None:
    with pytest.raises(ConfigError, match="reward 'test-pixel-mean': .*scael"):
        _binary(reward="test-pixel-mean", options={"scael": 2.0})


def test_threshold_must_be_a_number() -> None:
    with pytest.raises(ConfigError):
        _binary(reward="test-pixel-mean", threshold="high")
    with pytest.raises(ConfigError, match="nan"):
        _binary(reward="test-pixel-mean", threshold=float("nan"))
