"""The DDIM sampler passes the shared sampler contract, with Stable Diffusion's schedule and with a
deterministic last step (set_alpha_to_one)."""

from __future__ import annotations

import pytest

from dance.interfaces import Runtime
from dance.testing.sampler_contract import SamplerContract
from dance_ddim_sampler import DDIMConfig, DDIMSampler


class TestDDIMContract(SamplerContract):
    @pytest.fixture
    def sampler(self):
        return DDIMSampler(DDIMConfig(num_steps=4), Runtime())


class TestDDIMAlphaOneContract(SamplerContract):
    @pytest.fixture
    def sampler(self):
        return DDIMSampler(DDIMConfig(num_steps=5, set_alpha_to_one=True, eta=0.7), Runtime())
