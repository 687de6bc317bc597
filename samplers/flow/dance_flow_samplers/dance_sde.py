"""DanceGRPO's rectified-flow SDE step with a constant diffusion coefficient (``dance-sde``).

Follows DanceGRPO (Xue et al., 2025, arXiv 2505.07818), ``flux_step`` with ``sde_solver=True`` in
``fastvideo/train_grpo_flux.py``: mean = x + ds * v - 0.5 * eta^2 * score * ds with
score = -(x - x0 * (1 - s)) / s^2 = -e / s and ds = -D, std = eta * sqrt(D). That is the family's
mean x - D * (v + g^2 * e / (2 * s)) with g = eta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dance.config import option
from dance_flow_samplers.common import RectifiedFlowSDE, SDEWindowConfig


@dataclass
class DanceSDEConfig(SDEWindowConfig):
    eta: float = option(
        0.3, "constant noise scale g (DanceGRPO: FLUX 0.3, HunyuanVideo 0.25); 0 is Euler", ge=0
    )


class DanceSDESampler(RectifiedFlowSDE):
    """Rectified-flow SDE with constant diffusion ``g = eta`` (DanceGRPO)."""

    name = "dance-sde"
    config_class = DanceSDEConfig
    stochastic = True
    default_for = ("flow",)  # DanceGRPO's sampler: the training default of flow models

    def diffusion(self, s: torch.Tensor, levels: torch.Tensor) -> float:
        return self.config.eta
