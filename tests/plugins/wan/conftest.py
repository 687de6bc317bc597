"""Fixtures for the Wan plugin tests: one tiny random checkpoint per layout and session (Wan2.1
T2V and I2V, Wan2.2 TI2V-5B and T2V-A14B), policy builders and the diffusers pipelines loaded from
the same folders as the reference implementation."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from wan_helpers import BOUNDARY, SMALL, TEXTS, TI2V_SIZE, random_image

from dance.config import build
from dance.interfaces import Policy, Runtime
from dance.testing.policy_contract import PolicyContract
from dance_wan import WanI2VConfig, WanI2VPolicy, WanT2VConfig, WanT2VPolicy


def _build(tmp_path_factory: pytest.TempPathFactory, kind: str, **options: float) -> Path:
    from dance_wan.tiny import build_tiny_wan

    path = tmp_path_factory.mktemp("wan") / f"tiny-{kind}"
    return build_tiny_wan(path, kind=kind, seed=0, **options)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.1 text-to-video (WanPipeline)."""
    return _build(tmp_path_factory, "t2v")


@pytest.fixture(scope="session")
def tiny_wan_i2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.1 image-to-video (WanImageToVideoPipeline with a CLIP image encoder)."""
    return _build(tmp_path_factory, "i2v")


@pytest.fixture(scope="session")
def tiny_wan_ti2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.2 TI2V-5B (expand_timesteps, the 16x VAE)."""
    return _build(tmp_path_factory, "ti2v")


@pytest.fixture(scope="session")
def tiny_wan_a14b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.2 T2V-A14B (transformer + transformer_2). The boundary is 0.95 rather than the real
    0.875 so that the contract's two timesteps (sigma 1 and 0.9 of a 4-step schedule at shift 3)
    and a 3-step schedule reach both experts."""
    return _build(tmp_path_factory, "a14b", boundary_ratio=BOUNDARY)


@pytest.fixture(scope="session")
def tiny_wan_i2v_a14b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.2 I2V-A14B (two channel-condition experts, no CLIP), boundary 0.95 as the T2V one."""
    return _build(tmp_path_factory, "i2v-a14b", boundary_ratio=BOUNDARY)


def _maker(policy_class: type, config_class: type, path: Path, **base: object) -> Callable:
    def make(**overrides: object) -> Policy:
        values = {"model": str(path), **SMALL, **base, **overrides}
        return policy_class(build(config_class, values, prefix="policy."), Runtime())

    return make


@pytest.fixture
def make_t2v(tiny_wan: Path) -> Callable[..., WanT2VPolicy]:
    return _maker(WanT2VPolicy, WanT2VConfig, tiny_wan)


@pytest.fixture
def make_i2v(tiny_wan_i2v: Path) -> Callable[..., WanI2VPolicy]:
    return _maker(WanI2VPolicy, WanI2VConfig, tiny_wan_i2v)


@pytest.fixture
def make_i2v_a14b(tiny_wan_i2v_a14b: Path) -> Callable[..., WanI2VPolicy]:
    return _maker(WanI2VPolicy, WanI2VConfig, tiny_wan_i2v_a14b)


@pytest.fixture
def make_a14b(tiny_wan_a14b: Path) -> Callable[..., WanT2VPolicy]:
    return _maker(WanT2VPolicy, WanT2VConfig, tiny_wan_a14b)


@pytest.fixture
def make_ti2v(tiny_wan_ti2v: Path) -> Callable[..., Policy]:
    """TI2V-5B as text-to-video (``make_ti2v()``) or image-to-video (``make_ti2v(i2v=True)``)."""

    def make(i2v: bool = False, **overrides: object) -> Policy:
        classes = (WanI2VPolicy, WanI2VConfig) if i2v else (WanT2VPolicy, WanT2VConfig)
        size = {"height": TI2V_SIZE, "width": TI2V_SIZE}
        return _maker(*classes, tiny_wan_ti2v, **size)(**overrides)

    return make


@pytest.fixture
def perturb() -> Callable[..., None]:
    """Give every trainable weight of a policy a random offset, so that training 'happened'."""
    return functools.partial(PolicyContract._perturb, std=0.5)


@pytest.fixture(scope="session")
def i2v_prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL prompt file of image-to-video prompts with PNG images beside it (relative paths)."""
    from dance_wan.images import to_pil

    folder = tmp_path_factory.mktemp("wan-i2v-prompts")
    rows = {f"image{i}.png": text for i, text in enumerate(TEXTS + ["a dog running"])}
    for seed, name in enumerate(rows):
        to_pil(random_image(seed, 40, 48)).save(folder / name)
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t, "image": n}) + "\n" for n, t in rows.items()))
    return path
