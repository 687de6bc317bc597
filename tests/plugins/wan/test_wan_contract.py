"""Every Wan policy and checkpoint kind passes the shared policy contract on tiny random
checkpoints (which includes `dance run` for two iterations)."""

from __future__ import annotations

import pytest
from wan_helpers import SMALL, TEXTS, TI2V_SIZE, random_image

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestWanT2VContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_wan):
        return {"name": "wan-t2v", "model": str(tiny_wan), **SMALL}

    @pytest.fixture
    def prompts(self):
        return [Prompt(t) for t in TEXTS]


class TestWanI2VContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_wan_i2v):
        return {"name": "wan-i2v", "model": str(tiny_wan_i2v), **SMALL}

    @pytest.fixture
    def prompts(self):
        # Images of another size than the video: the crop-resize path runs too.
        return [Prompt(TEXTS[0], random_image(0, 40, 48)), Prompt(TEXTS[1], random_image(1))]

    @pytest.fixture
    def train_prompts(self, i2v_prompt_file):
        return str(i2v_prompt_file)


class TestWan22A14BContract(PolicyContract):
    """Two experts: the contract's timesteps (a 4-step schedule) reach both."""

    @pytest.fixture
    def policy_options(self, tiny_wan_a14b):
        return {"name": "wan-t2v", "model": str(tiny_wan_a14b), **SMALL}

    @pytest.fixture
    def prompts(self):
        return [Prompt(t) for t in TEXTS]


class TestWan22TI2VContract(PolicyContract):
    """TI2V-5B reading a first frame (per-token timesteps, the 16x VAE)."""

    @pytest.fixture
    def policy_options(self, tiny_wan_ti2v):
        size = {"height": TI2V_SIZE, "width": TI2V_SIZE}
        return {"name": "wan-i2v", "model": str(tiny_wan_ti2v), **SMALL, **size}

    @pytest.fixture
    def prompts(self):
        return [Prompt(TEXTS[0], random_image(0, 40, 48)), Prompt(TEXTS[1], random_image(1))]

    @pytest.fixture
    def train_prompts(self, i2v_prompt_file):
        return str(i2v_prompt_file)
