"""The Stable Diffusion policy passes the shared policy contract on the tiny random checkpoint,
with LoRA (the default) and as a full fine-tune."""

from __future__ import annotations

import pytest

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestSDContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_sd):
        return {
            "name": "sd",
            "model": str(tiny_sd),
            "height": 32,
            "width": 32,
            "lora_rank": 4,
            "lora_alpha": 8.0,
        }

    @pytest.fixture
    def prompts(self):
        return [Prompt("a red circle on the left"), Prompt("two blue squares")]
