"""dance-clip-rewards: the shared reward contract for the four rewards, with and without
gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dance.interfaces import Reward
from dance.testing.reward_contract import RewardContract

NAMES = ("hps", "clip-score", "pickscore", "laion-aesthetic")
# clip-score shares hps's open_clip path (features, cosine): its gradient run adds nothing new.
CASES = [(name, False) for name in NAMES] + [
    (name, True) for name in ("hps", "pickscore", "laion-aesthetic")
]


class TestClipRewardContract(RewardContract):
    batch_atol = 1e-5
    batch_rtol = 1e-5

    @pytest.fixture(
        scope="class",
        params=CASES,
        ids=lambda p: f"{p[0]}{'-differentiable' if p[1] else ''}",
    )
    @classmethod
    def reward(cls, request: pytest.FixtureRequest, make_reward: Callable[..., Reward]) -> Reward:
        name, differentiable = request.param
        # batch_size 2 with batches of 3: the chunking is part of what the contract checks.
        reward = make_reward(name, differentiable=differentiable, batch_size=2, video_frames=2)
        assert reward.is_differentiable() is differentiable
        assert type(reward).differentiable is True  # the class may; the instance says if it does
        return reward

    @pytest.fixture
    def media_shape(self) -> dict[str, tuple[int, ...]]:
        # Non-square and larger than the tiny models' 28 pixels: resizing, cropping and padding
        # all take part.
        return {"image": (3, 30, 44), "video": (3, 3, 30, 44)}


def test_registered_through_the_entry_point() -> None:
    from dance.registry import load_registry

    registry = load_registry()
    expected = {
        "hps": ("hps",),
        "clip-score": ("clip_score",),
        "pickscore": ("pickscore",),
        "laion-aesthetic": ("aesthetic",),
    }
    for name, components in expected.items():
        cls = registry.get("reward", name)
        assert cls.components == components
        assert cls.modalities == ("image", "video")
        assert cls.differentiable is True  # an instance built with differentiable=true is
