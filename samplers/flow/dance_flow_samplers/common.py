"""Code shared by the flow samplers: schedule fields, the SDE step and the sampler base class
(per-sample sigmas, noise and the log-density come from :mod:`dance.sampling.gaussian`).

Notation (see DESIGN.md, "The algorithm"): latents ``x`` at level ``s = s_k``, velocity ``v``, next
level ``s' = s_{k+1}``, ``D = s - s'``; clean prediction ``x0 = x - s * v``; noise prediction
``e = x + (1 - s) * v``. The reverse-time SDE with diffusion coefficient ``g`` discretised with
Euler-Maruyama gives ``x' ~ N(x - D * (v + g^2 * e / (2 * s)), g^2 * D)``; ``g = 0`` is Euler.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace

import torch

from dance.config import option
from dance.errors import ConfigError
from dance.interfaces import Sampler, Schedule, StepOutput
from dance.sampling.gaussian import (
    draw_noise,
    gather_levels,
    gaussian_log_prob,
    log_prob_reduction_option,
)
from dance_flow_samplers.flash import (
    ODE_SOLVERS,
    compressed_tail_sigmas,
    dpm_solver_2m_mean,
)
from dance_flow_samplers.schedule import flow_schedule
from dance_flow_samplers.window import (
    WINDOW_ENDS,
    WINDOW_SCHEDULES,
    last_window_start,
    sliding_window,
)


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
    """The fields of every stochastic flow sampler: the schedule, the log-probability's reduction
    and the SDE window (see window.py)."""

    log_prob_reduction: str = log_prob_reduction_option()
    sde_window_start: int = option(
        0,
        "first step of the SDE window (0-based); with sde_window_size > 0 only. With the "
        "progressive schedule: where the window starts and restarts",
        ge=0,
    )
    sde_window_size: int = option(
        0,
        "steps that draw noise, from sde_window_start on; every other step is a deterministic "
        "Euler step with no log-probability and is not trained (MixGRPO: 4; Flow-GRPO-Fast: 1 "
        "to 3 early steps). 0 = every step is stochastic. A window that runs past the last "
        "step is cut there (a sliding one before the last step)",
        ge=0,
    )
    sde_window_schedule: str = option(
        "fixed",
        "fixed: the window stays on its steps; progressive: MixGRPO's sliding window, moved "
        "along the steps during training (sde_window_shift_interval, sde_window_stride, "
        "sde_window_at_end); evaluation never slides",
        choices=WINDOW_SCHEDULES,
    )
    sde_window_shift_interval: int = option(
        25,
        "progressive only: training iterations between two moves of the window (MixGRPO's "
        "shift interval tau: 25; 20 for MixGRPO-Flash)",
        ge=1,
    )
    sde_window_stride: int = option(
        1,
        "progressive only: steps the window advances at each move (MixGRPO's window stride: "
        "1); 0 keeps it at sde_window_start (MixGRPO-Flash*'s frozen window)",
        ge=0,
    )
    sde_window_at_end: str = option(
        "restart",
        "progressive only: when the window would start past step num_steps - 2 (the last step "
        "is never in it): restart = back to sde_window_start (MixGRPO's published runs), "
        "hold = stay on num_steps - 2",
        choices=WINDOW_ENDS,
    )
    ode_solver_after_window: str = option(
        "euler",
        "solver of the ODE steps after the SDE window: euler, or dpmsolver++2m (second-order "
        "multistep DPM-Solver++, MixGRPO-Flash); the steps before the window stay Euler",
        choices=ODE_SOLVERS,
    )
    ode_steps_after_window: float = option(
        1.0,
        "share of the steps after the SDE window kept, spread evenly over the same sigma "
        "range (MixGRPO-Flash compresses them to 0.4); 1 = all of them",
        gt=0,
        le=1,
    )

    def check(self) -> None:
        flash = self.ode_solver_after_window != "euler" or self.ode_steps_after_window < 1
        if flash and not self.sde_window_size:
            raise ConfigError(
                "sampler.ode_solver_after_window and sampler.ode_steps_after_window act on the "
                "steps after the SDE window; set sampler.sde_window_size >= 1 (MixGRPO-Flash: 4)"
            )
        if self.sde_window_size and self.sde_window_start >= self.num_steps:
            raise ConfigError(
                f"sampler.sde_window_start={self.sde_window_start} is past the last step "
                f"({self.num_steps - 1}); pick a start below sampler.num_steps"
            )
        if self.sde_window_schedule != "progressive":
            return
        if self.sde_window_size < 1:
            raise ConfigError(
                "sampler.sde_window_schedule='progressive' slides a window of "
                "sampler.sde_window_size steps; set sde_window_size >= 1 (MixGRPO: 4)"
            )
        if self.sde_window_start > last_window_start(self.num_steps):
            raise ConfigError(
                f"sampler.sde_window_start={self.sde_window_start}: a sliding window starts at "
                f"most on step num_steps - 2 = {last_window_start(self.num_steps)} (the last "
                "step is never in it); lower it or raise sampler.num_steps"
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
        previous: StepOutput | None = None,
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
        if previous is not None and self.uses_previous_step():
            # After the window: DPM-Solver++(2M) from this step's and the step before's x0.
            k = step_index.to(x.device)
            s_prev, _ = gather_levels(levels, (k - 1).clamp(min=0), x.ndim)
            tail = (k >= self._window_stop()).view((-1,) + (1,) * (x.ndim - 1))
            multistep = dpm_solver_2m_mean(x, x0, previous.x0.float(), s_prev, s, s_next)
            mean = torch.where(tail, multistep, mean)

        if next_latents is not None:
            sample = next_latents.float()
        elif deterministic or not self.stochastic:
            sample = mean
        else:
            sample = mean + std * draw_noise(x, generator)

        log_prob = self._log_prob(sample, mean, std)  # [B]
        return StepOutput(next_latents=sample, log_prob=log_prob, mean=mean, std=std, x0=x0)

    def _window_stop(self) -> int:
        """The first step after the SDE window; no window here."""
        return 0

    def _log_prob(
        self, sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """Log-density ``[B]`` of ``sample``; 0 here (no density), see :class:`SDEWindowSampler`."""
        return torch.zeros(sample.shape[0], device=sample.device, dtype=torch.float32)

    def _in_window(self, step_index: torch.Tensor) -> torch.Tensor | None:
        """Bool ``[B]`` on ``step_index``'s device: whether each sample's step draws noise;
        None when every step does (the default path adds no work). No window here: see
        :class:`SDEWindowSampler`."""
        return None

    def noisy_steps(self, schedule: Schedule) -> torch.Tensor:
        if not self.stochastic:
            return torch.zeros(schedule.num_steps, dtype=torch.bool)
        window = self._in_window(torch.arange(schedule.num_steps))
        return torch.ones(schedule.num_steps, dtype=torch.bool) if window is None else window


class SDEWindowSampler(FlowSampler):
    """A stochastic flow sampler with an SDE window (:class:`SDEWindowConfig`): SDE steps
    inside, Euler ODE steps elsewhere; fixed, or sliding during training (MixGRPO)."""

    config: SDEWindowConfig

    def schedule(
        self, num_steps: int | None = None, device: torch.device | None = None
    ) -> Schedule:
        """The shifted schedule; with ``ode_steps_after_window < 1`` the steps after the window
        are fewer (MixGRPO-Flash). Another ``num_steps`` than the config's is never compressed:
        the window is placed on the config's steps."""
        full = super().schedule(num_steps, device)
        first, stop = self.window(0)
        if num_steps not in (None, self.config.num_steps) or stop == first:
            return full
        if self.config.ode_steps_after_window >= 1:
            return full
        tail = compressed_tail_sigmas(
            self.config.num_steps, self.config.shift, stop, self.config.ode_steps_after_window
        ).to(full.levels.device)
        levels = torch.cat([full.levels[:stop], tail])  # [stop + M]
        return Schedule(timesteps=levels[:-1], levels=levels)

    def uses_previous_step(self) -> bool:
        return self.config.ode_solver_after_window != "euler" and bool(self.config.sde_window_size)

    def _window_stop(self) -> int:
        return self.window(0)[1]

    def window(self, iteration: int = 0) -> tuple[int, int]:
        """The SDE steps ``[first, stop)`` at training ``iteration``; ``(0, 0)`` when there is
        no window (every step is stochastic). Not sliding: the same at every iteration."""
        cfg = self.config
        if not cfg.sde_window_size:
            return 0, 0
        if cfg.sde_window_schedule == "fixed":
            return cfg.sde_window_start, cfg.sde_window_start + cfg.sde_window_size
        return sliding_window(
            iteration,
            cfg.num_steps,
            cfg.sde_window_start,
            cfg.sde_window_size,
            cfg.sde_window_shift_interval,
            cfg.sde_window_stride,
            cfg.sde_window_at_end,
        )

    def for_iteration(self, iteration: int) -> SDEWindowSampler:
        """A fixed-window copy at the sliding window's place at ``iteration``; itself when the
        window does not slide."""
        if self.config.sde_window_schedule == "fixed":
            return self
        first, stop = self.window(iteration)
        config = replace(
            self.config,
            sde_window_schedule="fixed",
            sde_window_start=first,
            sde_window_size=stop - first,
        )
        return type(self)(config, self.runtime)

    def _log_prob(
        self, sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        return gaussian_log_prob(sample, mean, std, self.config.log_prob_reduction)

    def _in_window(self, step_index: torch.Tensor) -> torch.Tensor | None:
        # An unmoved sliding sampler (no iteration given) samples with its first window.
        first, stop = self.window(0)
        if stop == first:
            return None
        return (step_index >= first) & (step_index < stop)


class RectifiedFlowSDE(SDEWindowSampler):
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
