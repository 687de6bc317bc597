"""Fixtures for the VideoAlign tests: one tiny random checkpoint per session, released layout."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dance.config import build
from dance.interfaces import Runtime
from dance_videoalign import VideoAlignConfig, VideoAlignReward

# Frames of 56 x 56 pixels: with min_pixels lowered to 56 * 56 they stay that size, 4 x 4 patches of
# 14 (2 x 2 merged tokens per pair of frames), so the language model mostly reads the prompt.
SMALL = {"min_pixels": 56 * 56}


@pytest.fixture(scope="session")
def tiny_videoalign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``reward/`` of a tiny VideoAlign checkpoint (its base model beside it in ``base/``)."""
    from dance_videoalign.tiny import build_tiny_videoalign

    start = time.perf_counter()
    reward = build_tiny_videoalign(tmp_path_factory.mktemp("videoalign"), seed=0)
    assert time.perf_counter() - start < 20, "the tiny checkpoint should build in a few seconds"
    return reward


@pytest.fixture(scope="session")
def tiny_videoalign_3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with a 3-output reward head (VideoAlign's diagonal read-out)."""
    from dance_videoalign.tiny import build_tiny_videoalign

    return build_tiny_videoalign(tmp_path_factory.mktemp("videoalign3"), seed=1, output_dim=3)


@pytest.fixture
def make_reward(tiny_videoalign: Path) -> Callable[..., VideoAlignReward]:
    """Build the reward through the config path (build + validate), CPU, fp32."""

    def make(**overrides: object) -> VideoAlignReward:
        values = {"model": str(tiny_videoalign), **SMALL, **overrides}
        return VideoAlignReward(
            build(VideoAlignConfig, values, prefix="rewards.videoalign."), Runtime()
        )

    return make


@pytest.fixture(scope="session")
def shared_reward(tiny_videoalign: Path) -> VideoAlignReward:
    """One loaded reward for the tests that only score (it keeps no state between calls)."""
    values = {"model": str(tiny_videoalign), **SMALL}
    return VideoAlignReward(build(VideoAlignConfig, values), Runtime())
