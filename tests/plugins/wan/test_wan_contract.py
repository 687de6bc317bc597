"""Every Wan policy and checkpoint kind passes the shared policy contract on tiny random
checkpoints (which includes `dance run` for two iterations)."""

from __future__ import annotations

import pytest
from wan_helpers import SMALL, TEXTS, TI2V_SIZE, random_image

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TextPrompts(PolicyContract):
    @pytest.fixture
    def prompts(self):
        return [Prompt(t) for t in TEXTS]


class ImagePrompts(PolicyContract):
    @pytest.fixture
    def prompts(self):
        # Images of another size than the video: the crop-resize path runs too.
        return [Prompt(TEXTS[0], random_image(0, 40, 48)), Prompt(TEXTS[1], random_image(1))]

    @pytest.fixture
    def train_prompts(self, i2v_prompt_file):
        return str(i2v_prompt_file)


class TestWanT2VContract(TextPrompts):
    @pytest.fixture
    def policy_options(self, tiny_wan):
        return {"name": "wan-t2v", "model": str(tiny_wan), **SMALL}


class TestWanI2VContract(ImagePrompts):
    @pytest.fixture
    def policy_options(self, tiny_wan_i2v):
        return {"name": "wan-i2v", "model": str(tiny_wan_i2v), **SMALL}


class TestWan22A14BContract(TextPrompts):
    """Two experts: the contract's timesteps (a 4-step schedule) reach both."""

    @pytest.fixture
    def policy_options(self, tiny_wan_a14b):
        return {"name": "wan-t2v", "model": str(tiny_wan_a14b), **SMALL}


class TestWan22TI2VContract(ImagePrompts):
    """TI2V-5B reading a first frame (per-token timesteps, the 16x VAE)."""

    @pytest.fixture
    def policy_options(self, tiny_wan_ti2v):
        size = {"height": TI2V_SIZE, "width": TI2V_SIZE}
        return {"name": "wan-i2v", "model": str(tiny_wan_ti2v), **SMALL, **size}
