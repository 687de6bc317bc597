"""Rectified-flow samplers for dance: DanceGRPO's and Flow-GRPO's SDE steps, CPS and the Euler ODE.

Every sampler here expects a policy that predicts the flow velocity ``v`` (``x_1 - x_0`` with
``x_sigma = (1 - sigma) * x_0 + sigma * x_1``) and steps from sigma 1 (noise) to sigma 0 (data).
"""

from dance_flow_samplers.common import (
    FlowSampler,
    FlowScheduleConfig,
    RectifiedFlowSDE,
    SDEWindowConfig,
    SDEWindowSampler,
)
from dance_flow_samplers.cps import CPSConfig, CPSSampler
from dance_flow_samplers.dance_sde import DanceSDEConfig, DanceSDESampler
from dance_flow_samplers.flow_sde import FlowSDEConfig, FlowSDESampler
from dance_flow_samplers.ode import EulerODESampler, ODEConfig
from dance_flow_samplers.schedule import flow_schedule, shifted_sigmas
from dance_flow_samplers.window import sliding_window

__all__ = [
    "CPSConfig",
    "CPSSampler",
    "DanceSDEConfig",
    "DanceSDESampler",
    "EulerODESampler",
    "FlowSDEConfig",
    "FlowSDESampler",
    "FlowSampler",
    "FlowScheduleConfig",
    "ODEConfig",
    "RectifiedFlowSDE",
    "SDEWindowConfig",
    "SDEWindowSampler",
    "flow_schedule",
    "shifted_sigmas",
    "sliding_window",
]
