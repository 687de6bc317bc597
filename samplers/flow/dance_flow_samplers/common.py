"""Code shared by the flow samplers: schedule fields, the SDE step and the sampler base class
(per-sample sigmas, noise and the log-density come from :mod:`dance.sampling.gaussian`).

Notation (see DESIGN.md, "The algorithm"): latents ``x`` at level ``s = s_k``, velocity ``v``, next
level ``s' = s_{k+1}``, ``D = s - s'``; clean prediction ``x0 = x - s * v``; noise prediction
``e = x + (1 - s) * v``. The reverse-time SDE with diffusion coefficient ``g`` discretised with
Euler-Maruyama gives ``x' ~ N(x - D * (v + g^2 * e / (2 * s)), g^2 * D)``; ``g = 0`` is Euler.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from dance.config import option
from dance.errors import ConfigError
from dance.interfaces import Sampler, Schedule, StepOutput
from dance.sampling.gaussian import draw_noise, gather_levels, gaussian_log_prob
from dance_flow_samplers.schedule import flow_schedule


@dataclass
class FlowScheduleConfig:
    """Schedule fields every flow sampler has."""

    num_steps: int = option(16, "number of denoising steps from sigma 1 to sigma 0", ge=1)
    shift: float = option(
        3.0,
        "sigma shift: s = shift*u / (1 + (shift-1)*u); above 1 keeps more steps at high noise",
        gt=0,
    )


@dataclass
class SDEWindowConfig(FlowScheduleConfig):
    """Schedule fields plus the SDE window of the stochastic flow samplers."""

    sde_window_start: int = option(
        0, "first step of the SDE window (0-based); with sde_window_size > 0 only", ge=0
    )
    sde_window_size: int = option(
        0,
        "steps that draw noise, from sde_window_start on; every other step is a deterministic "
        "Euler step with no log-probability and is not trained (MixGRPO / Flow-GRPO-Fast: 1 to 3 "
        "early steps). 0 = every step is stochastic",
        ge=0,
    )

    def check(self) -> None:
        if self.sde_window_size and self.sde_window_start >= self.num_steps:
            raise ConfigError(
                f"sampler.sde_window_start={self.sde_window_start} is past the last step "
                f"({self.num_steps - 1}); pick a start below sampler.num_steps"
            )


def sde_mean_std(
    x: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    s_next: torch.Tensor,
    g: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mean and std of one Euler-Maruyama step of the flow SDE with diffusion ``g``."""
    d = s - s_next
    e = x + (1.0 - s) * v
    mean = x - d * (v + (g * g) * e / (2.0 * s))
    std = g * d.sqrt()
    return mean, std


class FlowSampler(Sampler):
    """Base of the flow samplers: the schedule and the step; subclasses give the mean and std."""

    prediction_types = ("flow",)

    def schedule(
        self, num_steps: int | None = None, device: torch.device | None = None
    ) -> Schedule:
        steps = self.config.num_steps if num_steps is None else num_steps
        return flow_schedule(steps, self.config.shift, device or self.runtime.device)

    @abstractmethod
    def mean_std(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        x0: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        levels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, *L]`` and std ``[B, 1, ...]`` of ``x_{k+1}``, all fp32.

        ``s`` and ``s_next`` are per-sample ``[B, 1, ...]``; ``levels`` is the whole sigma table.
        """

    def step(
        self,
        model_output: torch.Tensor,
        latents: torch.Tensor,
        step_index: torch.Tensor,
        schedule: Schedule,
        next_latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> StepOutput:
        """One step per sample from ``step_index [B]``; see :meth:`dance.interfaces.Sampler.step`.

        All math runs in fp32 (bf16 loses the small ``D`` terms). Given ``next_latents`` (a stored
        transition), nothing is drawn and ``deterministic`` is ignored. Deterministic samplers
        (``stochastic = False``) and samples whose std is 0 get log-prob 0.
        """
        x = latents.float()
        v = model_output.float()
        levels = schedule.levels.to(device=x.device, dtype=torch.float32)
        s, s_next = gather_levels(levels, step_index, x.ndim)
        x0 = x - s * v
        mean, std = self.mean_std(x, v, x0, s, s_next, levels)
        window = self._in_window(step_index.to(x.device)) if self.stochastic else None  # [B]
        if window is not None:  # outside the SDE window: the Euler (ODE) step, std 0
            mask = window.view((-1,) + (1,) * (x.ndim - 1))
            mean = torch.where(mask, mean, x - (s - s_next) * v)
            std = torch.where(mask, std, torch.zeros_like(std))

        if next_latents is not None:
            sample = next_latents.float()
        elif deterministic or not self.stochastic:
            sample = mean
        else:
            sample = mean + std * draw_noise(x, generator)

        if self.stochastic:
            log_prob = gaussian_log_prob(sample, mean, std, self.config.log_prob_reduction)
        else:
            log_prob = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return StepOutput(next_latents=sample, log_prob=log_prob, mean=mean, std=std, x0=x0)

    def _in_window(self, step_index: torch.Tensor) -> torch.Tensor | None:
        """Bool ``[B]`` on ``step_index``'s device: whether each sample's step draws noise (see
        SDEWindowConfig); None when every step does, so the default path adds no work."""
        size = getattr(self.config, "sde_window_size", 0)
        if not size:
            return None
        start = self.config.sde_window_start
        return (step_index >= start) & (step_index < start + size)

    def noisy_steps(self, schedule: Schedule) -> torch.Tensor:
        if not self.stochastic:
            return torch.zeros(schedule.num_steps, dtype=torch.bool)
        window = self._in_window(torch.arange(schedule.num_steps))
        return torch.ones(schedule.num_steps, dtype=torch.bool) if window is None else window


class RectifiedFlowSDE(FlowSampler):
    """The rectified-flow SDE family: variants differ only in the diffusion coefficient ``g``."""

    @abstractmethod
    def diffusion(self, s: torch.Tensor, levels: torch.Tensor) -> torch.Tensor | float:
        """The diffusion coefficient ``g`` at per-sample sigma ``s [B, 1, ...]`` (or a constant)."""

    def mean_std(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        x0: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        levels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sde_mean_std(x, v, s, s_next, self.diffusion(s, levels))
