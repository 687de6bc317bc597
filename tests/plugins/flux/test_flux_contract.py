"""The FLUX policy passes the shared policy contract on the tiny random checkpoint."""

from __future__ import annotations

import pytest

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestFluxContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_flux):
        return {
            "name": "flux",
            "model": str(tiny_flux),
            "height": 32,
            "width": 32,
            "max_sequence_length": 16,
            "lora_rank": 4,
            "lora_alpha": 8.0,
        }

    @pytest.fixture
    def prompts(self):
        return [Prompt("a red circle on the left"), Prompt("two blue squares")]
