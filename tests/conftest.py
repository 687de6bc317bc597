"""Fixtures shared by every test directory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FLUX checkpoint in the real diffusers layout, built once per session."""
    from dance_flux.tiny import build_tiny_flux

    path = tmp_path_factory.mktemp("flux") / "tiny-flux"
    start = time.perf_counter()
    build_tiny_flux(path, seed=0)
    assert time.perf_counter() - start < 10, "the tiny checkpoint should build in about a second"
    return path
