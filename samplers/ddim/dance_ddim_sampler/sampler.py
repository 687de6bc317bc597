"""The DDIM step with noise (``ddim``) and the log-probability of its transition.

Follows the DDIM update (Song et al., 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16)
as diffusers' ``DDIMScheduler.step`` implements it and as DDPO (Black et al., 2023,
``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py``) and DanceGRPO
(``fastvideo/models/stable_diffusion/ddim_with_logprob.py``) use it for RL, with ``eta = 1``:

    x0   = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)
    std  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mean = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev - std^2) * eps
    x_prev = mean + std * z

The log-probability is the Gaussian density of ``x_prev`` under ``(mean, std)`` in fp32, averaged
over the non-batch elements (DDPO's and DanceGRPO's convention) or summed
(:func:`dance.sampling.gaussian.gaussian_log_prob`).

DDPO clamps the previous timestep of the last step to 0 before looking up its alpha, so it always
uses ``abar_0`` there; that is what Stable Diffusion 1.x's ``set_alpha_to_one = false`` gives too.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from dance_ddim_sampler.schedule import ddim_schedule


@dataclass
class DDIMConfig:
    """DDIM with noise; the schedule defaults are Stable Diffusion 1.x's scheduler config."""

    num_steps: int = option(50, "number of DDIM steps (DanceGRPO and DDPO: 50)", ge=1)
    eta: float = option(
        1.0,
        "noise scale: 1 is DDPM-like ancestral sampling (DanceGRPO, DDPO), 0 deterministic DDIM",
        ge=0,
        le=1,
    )
    num_train_timesteps: int = option(1000, "diffusion steps the model was trained with", ge=1)
    beta_start: float = option(0.00085, "first training beta", gt=0, lt=1)
    beta_end: float = option(0.012, "last training beta", gt=0, lt=1)
    beta_schedule: str = option(
        "scaled_linear",
        "training betas: 'scaled_linear' (linear in sqrt(beta), Stable Diffusion) or 'linear'",
        choices=("scaled_linear", "linear"),
    )
    timestep_spacing: str = option(
        "leading",
        "where the sampling timesteps fall: 'leading' (Stable Diffusion 1.x: 981, 961, ..., 1) or"
        " 'trailing' (999, 979, ..., 19)",
        choices=("leading", "trailing"),
    )
    steps_offset: int = option(1, "added to every 'leading' timestep (Stable Diffusion: 1)", ge=0)
    set_alpha_to_one: bool = option(
        False,
        "take abar = 1 after the last step (a deterministic last step); Stable Diffusion 1.x"
        " uses abar_0 instead",
    )
    clip_sample: bool = option(False, "clamp the clean prediction x0 to +-clip_sample_range")
    clip_sample_range: float = option(1.0, "bound of the x0 clamp when clip_sample is on", gt=0)
    log_prob_reduction: str = log_prob_reduction_option()

    def check(self) -> None:
        if self.beta_end < self.beta_start:
            raise ConfigError(
                f"sampler.beta_end ({self.beta_end}) must be at least sampler.beta_start"
                f" ({self.beta_start})"
            )
        if self.num_steps > self.num_train_timesteps:
            raise ConfigError(
                f"sampler.num_steps ({self.num_steps}) cannot exceed sampler.num_train_timesteps"
                f" ({self.num_train_timesteps})"
            )


def ddim_mean_std(
    x: torch.Tensor,
    eps: torch.Tensor,
    abar_t: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: float,
    clip_range: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean prediction ``x0``, Gaussian ``mean`` and ``std`` of one DDIM step with noise ``eta``.

    ``clip_range`` clamps ``x0`` (diffusers' ``clip_sample``); ``eps`` is used as predicted (no
    re-derivation from the clamped ``x0``, diffusers' default ``use_clipped_model_output=False``).
    """
    x0 = (x - (1.0 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    std = eta * variance.sqrt()
    # 1 - abar_prev - std^2 >= 0 for eta <= 1; the clamp only absorbs fp32 rounding at eta = 1.
    direction = (1.0 - abar_prev - std.square()).clamp_min(0.0).sqrt()
    mean = abar_prev.sqrt() * x0 + direction * eps
    return x0, mean, std


class DDIMSampler(Sampler):
    """DDIM with noise ``eta`` over a discrete diffusion schedule (epsilon prediction)."""

    name = "ddim"
    config_class = DDIMConfig
    prediction_types = ("epsilon",)
    stochastic = True
    # DDPO's / DanceGRPO's sampler for diffusion models, and with eta 0 their noise-free DDIM.
    default_for = ("epsilon",)
    deterministic_for = ("epsilon",)
    deterministic_options = {"eta": 0.0}

    def schedule(
        self, num_steps: int | None = None, device: torch.device | None = None
    ) -> Schedule:
        """Timesteps ``[N]`` (int64) for the model, cumulative alphas ``[N + 1]`` for the step."""
        cfg = self.config
        steps = cfg.num_steps if num_steps is None else num_steps
        try:
            return ddim_schedule(
                steps,
                num_train_timesteps=cfg.num_train_timesteps,
                beta_start=cfg.beta_start,
                beta_end=cfg.beta_end,
                beta_schedule=cfg.beta_schedule,
                spacing=cfg.timestep_spacing,
                steps_offset=cfg.steps_offset,
                set_alpha_to_one=cfg.set_alpha_to_one,
                device=device or self.runtime.device,
            )
        except ValueError as exc:
            raise ConfigError(f"sampler 'ddim': {exc}") from None

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
        """One DDIM step per sample from ``step_index [B]``; see
        :meth:`dance.interfaces.Sampler.step`. The math runs in fp32. Given ``next_latents`` (a
        stored transition) nothing is drawn; ``deterministic`` returns the mean (eta = 0 DDIM when
        eta is 0, the noise-free mean otherwise)."""
        cfg = self.config
        x = latents.float()
        eps = model_output.float()
        levels = schedule.levels.to(device=x.device, dtype=torch.float32)
        abar_t, abar_prev = gather_levels(levels, step_index, x.ndim)
        clip = cfg.clip_sample_range if cfg.clip_sample else None
        x0, mean, std = ddim_mean_std(x, eps, abar_t, abar_prev, cfg.eta, clip)

        if next_latents is not None:
            sample = next_latents.float()
        elif deterministic or cfg.eta == 0:
            sample = mean  # eta = 0 is plain DDIM: std 0, nothing to draw
        else:
            sample = mean + std * draw_noise(x, generator)
        log_prob = gaussian_log_prob(sample, mean, std, cfg.log_prob_reduction)
        return StepOutput(next_latents=sample, log_prob=log_prob, mean=mean, std=std, x0=x0)
