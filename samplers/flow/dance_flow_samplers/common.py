"""Code shared by the flow samplers: config fields, per-sample sigmas, SDE step, log-density.

Notation (see DESIGN.md, "The algorithm"): latents ``x`` at level ``s = s_k``, velocity ``v``, next
level ``s' = s_{k+1}``, ``D = s - s'``; clean prediction ``x0 = x - s * v``; noise prediction
``e = x + (1 - s) * v``. The reverse-time SDE with diffusion coefficient ``g`` discretised with
Euler-Maruyama gives ``x' ~ N(x - D * (v + g^2 * e / (2 * s)), g^2 * D)``; ``g = 0`` is Euler.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from dance.config import option
from dance.interfaces import Sampler, Schedule, StepOutput
from dance_flow_samplers.schedule import flow_schedule

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class FlowScheduleConfig:
    """Schedule fields every flow sampler has."""

    num_steps: int = option(16, "number of denoising steps from sigma 1 to sigma 0", ge=1)
    shift: float = option(
        3.0,
        "sigma shift: s = shift*u / (1 + (shift-1)*u); above 1 keeps more steps at high noise",
        gt=0,
    )


def log_prob_reduction_option() -> Any:
    """The ``log_prob_reduction`` field of the stochastic samplers' configs."""
    return option(
        "mean",
        "reduce the per-element log-density over non-batch dims by 'mean' (DanceGRPO) or 'sum'",
        choices=("mean", "sum"),
    )


def gather_sigmas(
    levels: torch.Tensor, step_index: torch.Tensor, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``s_k`` and ``s_{k+1}`` as ``[B, 1, ...]``, broadcastable to ``ndim``-D latents.

    A training micro-batch mixes steps, so sigmas are gathered per sample, never read as scalars.
    """
    idx = step_index.to(device=levels.device, dtype=torch.long)
    shape = (idx.shape[0],) + (1,) * (ndim - 1)
    s = levels.index_select(0, idx).view(shape)
    s_next = levels.index_select(0, idx + 1).view(shape)
    return s, s_next


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


def gaussian_log_prob(
    sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Log-density ``[B]`` of ``sample`` under ``N(mean, std^2)``, reduced over non-batch dims.

    ``std`` is ``[B, 1, ...]``: one std per sample. Samples with ``std == 0`` made a deterministic
    transition, which has no density; they get log-prob 0 (a constant, so their importance ratio is
    1 and they add no gradient), never NaN or inf. Gradients flow through ``mean`` only.
    """
    batch = mean.shape[0]
    std_b = std.reshape(batch).float()
    stochastic = std_b > 0
    # Substitute 1 for zero stds before dividing, so that neither the value nor the gradient of
    # the masked-out branch of torch.where carries inf or NaN.
    safe = torch.where(stochastic, std_b, torch.ones_like(std_b))
    sq = (sample.detach().float() - mean.float()).square().flatten(1)
    # Reduce the squared error first, then apply the per-sample scale: same value as reducing
    # the per-element density, one fewer pass over the latents.
    if reduction == "mean":
        sq, count = sq.mean(dim=1), 1
    elif reduction == "sum":
        sq, count = sq.sum(dim=1), sq.shape[1]
    else:
        raise ValueError(f"log_prob_reduction must be 'mean' or 'sum', got {reduction!r}")
    log_prob = -sq / (2.0 * safe.square()) - count * (safe.log() + _HALF_LOG_2PI)
    return torch.where(stochastic, log_prob, torch.zeros_like(log_prob))


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
        s, s_next = gather_sigmas(levels, step_index, x.ndim)
        x0 = x - s * v
        mean, std = self.mean_std(x, v, x0, s, s_next, levels)

        if next_latents is not None:
            sample = next_latents.float()
        elif deterministic or not self.stochastic:
            sample = mean
        else:
            # Draw on the generator's device so a CPU generator gives the same noise on any device.
            device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
            sample = mean + std * noise.to(x.device)

        if self.stochastic:
            log_prob = gaussian_log_prob(sample, mean, std, self.config.log_prob_reduction)
        else:
            log_prob = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return StepOutput(next_latents=sample, log_prob=log_prob, mean=mean, std=std, x0=x0)


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
