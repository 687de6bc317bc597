"""Flow-GRPO's rectified-flow SDE step (``flow-sde``).

Follows Flow-GRPO (Liu et al., 2025, arXiv 2505.05470), ``sde_step_with_logprob`` with
``sde_type='sde'`` in ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``:
g = a * sqrt(s / (1 - s)), with s_1 in the denominator where s == 1 (the first step), and
mean = x * (1 + g^2 / (2s) * dt) + v * (1 + g^2 * (1 - s) / (2s)) * dt, dt = -D, std = g * sqrt(D);
expanding e = x + (1 - s) * v shows it is the family's mean x - D * (v + g^2 * e / (2 * s)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dance.config import option
from dance.sampling.gaussian import log_prob_reduction_option
from dance_flow_samplers.common import RectifiedFlowSDE, SDEWindowConfig


@dataclass
class FlowSDEConfig(SDEWindowConfig):
    noise_level: float = option(
        0.7, "noise scale a in g = a * sqrt(s / (1 - s)) (Flow-GRPO default 0.7); 0 is Euler", ge=0
    )
    log_prob_reduction: str = log_prob_reduction_option()


class FlowSDESampler(RectifiedFlowSDE):
    """Rectified-flow SDE with ``g = a * sqrt(s / (1 - s))`` (Flow-GRPO)."""

    name = "flow-sde"
    config_class = FlowSDEConfig
    stochastic = True

    def diffusion(self, s: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        # 1 - s vanishes at s = 1; Flow-GRPO puts the next level s_1 in the denominator there.
        denom = 1.0 - torch.where(s == 1.0, levels[1], s)
        return self.config.noise_level * torch.sqrt(s / denom)
