"""Entry point of the ``ddim`` plugin: registers the DDIM sampler with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_ddim_sampler.sampler import DDIMSampler


@dance.hookimpl
def register_samplers(register: Callable[[type], None]) -> None:
    register(DDIMSampler)
