"""The discrete diffusion schedule of DDIM: training betas, cumulative alphas, sampling timesteps.

Follows diffusers' ``DDIMScheduler`` (schedulers/scheduling_ddim.py): ``__init__`` for the betas and
``alphas_cumprod`` (computed in fp32 the same way, so the tables agree bit for bit) and
``set_timesteps`` for the ``leading`` and ``trailing`` timestep spacings.
"""

from __future__ import annotations

import torch

from dance.interfaces import Schedule


def alphas_cumprod(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str
) -> torch.Tensor:
    """``abar_t`` for t = 0 .. T-1 (fp32): the cumulative product of ``1 - beta_t``.

    ``scaled_linear`` (Stable Diffusion) is linear in ``sqrt(beta)``; ``linear`` in ``beta``.
    """
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(
            beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32
        ).square()
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(
            f"beta_schedule must be 'scaled_linear' or 'linear', got {beta_schedule!r}"
        )
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(
    num_steps: int, num_train_timesteps: int, spacing: str, steps_offset: int
) -> torch.Tensor:
    """The ``num_steps`` discrete timesteps (int64, decreasing) the model is evaluated at.

    ``leading``: ``k * (T // N) + steps_offset`` for k = N-1 .. 0 (Stable Diffusion 1.x: 981, 961,
    ..., 1 for 50 steps). ``trailing``: ``round(T - k * T / N) - 1`` for k = 0 .. N-1, which ends
    at ``T / N - 1`` and starts at ``T - 1`` (the steps_offset does not apply, as in diffusers).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be between 1 and num_train_timesteps={num_train_timesteps},"
            f" got {num_steps}"
        )
    k = torch.arange(num_steps, dtype=torch.float64)
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        timesteps = (k.flip(0) * ratio).round().long() + steps_offset
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        timesteps = (num_train_timesteps - k * ratio).round().long() - 1
    else:
        raise ValueError(f"timestep_spacing must be 'leading' or 'trailing', got {spacing!r}")
    if timesteps.max() >= num_train_timesteps or timesteps.min() < 0:
        raise ValueError(
            f"{num_steps} steps with timestep_spacing={spacing!r} and steps_offset={steps_offset}"
            f" reach timestep {int(timesteps.max())}, outside 0..{num_train_timesteps - 1};"
            " use fewer steps or steps_offset=0"
        )
    return timesteps


def ddim_schedule(
    num_steps: int,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    spacing: str = "leading",
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
    device: torch.device | str | None = None,
) -> Schedule:
    """The :class:`~dance.interfaces.Schedule` of the DDIM sampler.

    ``timesteps [N]`` (int64) are what the model receives; ``levels [N + 1]`` (fp32) are the
    cumulative alphas: ``levels[k] = abar(timesteps[k])`` and ``levels[N]`` is the "previous" alpha
    of the last step, ``1`` with ``set_alpha_to_one`` and ``abar_0`` otherwise (Stable Diffusion
    1.x uses ``abar_0``, so its last step is still slightly stochastic).

    Step k goes from ``levels[k]`` to ``levels[k + 1]``. diffusers reads the previous alpha at
    ``t - T // N``, which is the next timestep of the schedule whenever the spacing is even (always
    for ``leading``; for ``trailing`` when N divides T); otherwise this table keeps the DDIM
    definition (the next timestep actually visited).
    """
    table = alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
    timesteps = ddim_timesteps(num_steps, num_train_timesteps, spacing, steps_offset)
    final = torch.ones(1) if set_alpha_to_one else table[:1]
    levels = torch.cat([table[timesteps], final])
    return Schedule(timesteps=timesteps.to(device), levels=levels.to(device))
