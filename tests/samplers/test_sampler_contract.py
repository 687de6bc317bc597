"""The shared sampler contract, run on every built-in flow sampler."""

import pytest

import dance
from dance.registry import load_registry
from dance.testing.sampler_contract import SamplerContract


class TestFlowSamplers(SamplerContract):
    @pytest.fixture(params=["dance-sde", "flow-sde", "cps", "ode"])
    def sampler(self, request):
        registry = load_registry()
        return registry.create("sampler", request.param, {"num_steps": 5}, dance.Runtime())
