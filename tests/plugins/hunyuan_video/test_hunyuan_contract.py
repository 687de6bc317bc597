"""Both policies of the plugin pass the shared policy contract on tiny random checkpoints."""

from __future__ import annotations

import pytest
from hunyuan_helpers import SMALL, random_image

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestHunyuanVideoContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_hunyuan):
        return {"name": "hunyuan-video", "model": str(tiny_hunyuan), **SMALL}

    @pytest.fixture
    def prompts(self):
        return [Prompt("a cat on the beach"), Prompt("a red fox in the snow, cinematic lighting")]


class TestSkyReelsI2VContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_skyreels):
        return {"name": "skyreels-i2v", "model": str(tiny_skyreels), **SMALL}

    @pytest.fixture
    def prompts(self):
        # Images of another size than the video: the crop-resize path runs too.
        return [
            Prompt("a cat on the beach", random_image(0, 40, 48)),
            Prompt("a red fox in the snow", random_image(1)),
        ]

    @pytest.fixture
    def train_prompts(self, i2v_prompt_file):
        return str(i2v_prompt_file)
