"""Fixtures for the ImageReward tests: one tiny checkpoint in the released layout per session."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_imagereward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ImageReward.pt``, ``med_config.json`` and ``tokenizer/`` of a tiny random ImageReward."""
    from dance_imagereward.tiny import build_tiny_imagereward

    path = tmp_path_factory.mktemp("imagereward") / "tiny-imagereward"
    start = time.perf_counter()
    build_tiny_imagereward(path, seed=0)
    assert time.perf_counter() - start < 15, "the tiny checkpoint should build in a few seconds"
    return path


@pytest.fixture(scope="session")
def tiny_options(tiny_imagereward: Path) -> dict[str, str]:
    """Reward options pointing at the tiny files."""
    return {"model": str(tiny_imagereward), "tokenizer": str(tiny_imagereward / "tokenizer")}
