"""Coefficients-preserving sampling (``cps``).

Follows Flow-GRPO's CPS option (Wang and Yu, 2025, "Coefficients-Preserving Sampling for
Reinforcement Learning with Flow Matching", arXiv 2509.05952), ``sde_step_with_logprob`` with
``sde_type='cps'`` in Flow-GRPO's ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``:
std = s' * sin(a * pi / 2), mean = (1 - s') * x0 + sqrt(s'^2 - std^2) * e. The next latents keep
the coefficients of a point on the flow path: (1 - s') times the clean part, and noise of total
std s' (s' * cos from the predicted noise e, s' * sin freshly drawn).
Unlike that code, which drops the Gaussian normaliser and the 1 / (2 std^2) scale, the log-prob here
is the full Gaussian log-density. The last step (s' = 0) is deterministic: std 0, log-prob 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dance.config import option
from dance.sampling.gaussian import log_prob_reduction_option
from dance_flow_samplers.common import FlowSampler, SDEWindowConfig


@dataclass
class CPSConfig(SDEWindowConfig):
    noise_level: float = option(
        0.7,
        "noise angle a: std = s_next * sin(a * pi / 2); 0 is DDIM-like, 1 all fresh noise",
        ge=0,
        le=1,
    )
    log_prob_reduction: str = log_prob_reduction_option()


class CPSSampler(FlowSampler):
    """Coefficients-preserving stochastic step (Flow-GRPO's ``cps``)."""

    name = "cps"
    config_class = CPSConfig
    stochastic = True

    def mean_std(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        x0: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        levels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angle = self.config.noise_level * math.pi / 2
        std = s_next * math.sin(angle)
        e = x + (1.0 - s) * v
        # sqrt(s'^2 - std^2) = s' * cos(angle) for angle in [0, pi/2]; the closed form cannot
        # round to a negative number under the square root.
        mean = (1.0 - s_next) * x0 + (s_next * math.cos(angle)) * e
        return mean, std
