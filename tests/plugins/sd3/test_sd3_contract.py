"""The SD3 policy passes the shared policy contract on the tiny random checkpoint (which includes
`dance run` end to end for two iterations)."""

from __future__ import annotations

import pytest

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestSD3Contract(PolicyContract):
    @pytest.fixture
    def policy_options(self, policy_values):
        return {"name": "sd3", **policy_values}

    @pytest.fixture
    def prompts(self):
        return [Prompt("a red circle on the left"), Prompt("two blue squares")]
