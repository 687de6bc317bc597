"""The deterministic Euler step of the probability-flow ODE (``ode``), for evaluation.

Follows the flow-matching Euler solver (diffusers ``FlowMatchEulerDiscreteScheduler.step``;
DanceGRPO's ``flux_step`` with ``sde_solver=False``): x_{k+1} = x_k - D * v, D = s_k - s_{k+1}.
It has no transition density: ``stochastic = False``, std 0 and log-prob 0 for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dance_flow_samplers.common import FlowSampler, FlowScheduleConfig


@dataclass
class ODEConfig(FlowScheduleConfig):
    """Only the schedule: the Euler step has no noise."""


class EulerODESampler(FlowSampler):
    """Deterministic Euler step ``x - D * v``."""

    name = "ode"
    config_class = ODEConfig
    stochastic = False
    deterministic_for = ("flow",)  # evaluation and `dance sample` of flow models

    def mean_std(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        x0: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        levels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x - (s - s_next) * v, torch.zeros_like(s)
