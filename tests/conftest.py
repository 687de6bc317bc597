"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run every test's tensor ops on one intra-op thread. The tests use tiny models whose ops
    take microseconds, so a second thread mostly waits for the first; on a busy 2-core machine
    that made tiny-model tests 5-40x slower (measured by the SD, HunyuanVideo and ImageReward
    suites). The previous setting is restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FLUX checkpoint in the real diffusers layout, built once per session."""
    from dance_flux.tiny import build_tiny_flux

    path = tmp_path_factory.mktemp("flux") / "tiny-flux"
    build_tiny_flux(path, seed=0)
    return path
