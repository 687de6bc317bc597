"""Entry point of the ``flow-samplers`` plugin: registers the four rectified-flow samplers."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_flow_samplers.cps import CPSSampler
from dance_flow_samplers.dance_sde import DanceSDESampler
from dance_flow_samplers.flow_sde import FlowSDESampler
from dance_flow_samplers.ode import EulerODESampler


@dance.hookimpl
def register_samplers(register: Callable[[type], None]) -> None:
    for cls in (DanceSDESampler, FlowSDESampler, CPSSampler, EulerODESampler):
        register(cls)
