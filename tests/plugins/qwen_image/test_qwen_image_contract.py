"""The Qwen-Image policy passes the shared policy contract on the tiny random checkpoint (which
includes `dance run` end to end for two iterations)."""

from __future__ import annotations

import pytest

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestQwenImageContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, policy_values):
        return {"name": "qwen-image", **policy_values}

    @pytest.fixture
    def prompts(self):
        # Of different lengths, so that the batch pads and masks the shorter one.
        return [Prompt("a red circle on the left"), Prompt("two blue squares")]
