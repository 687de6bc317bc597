"""The shifted rectified-flow sigma schedule.

Follows the time shift of Stable Diffusion 3 (Esser et al., 2024, "Scaling Rectified Flow
Transformers", eq. 23) as DanceGRPO applies it (``sd3_time_shift`` over ``linspace(1, 0, N + 1)``
in ``fastvideo/train_grpo_flux.py``): u_k = 1 - k/N, s_k = shift * u_k / (1 + (shift - 1) * u_k).
"""

from __future__ import annotations

import torch

from dance.interfaces import Schedule


def shifted_sigmas(
    num_steps: int, shift: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sigmas ``[num_steps + 1]`` (fp32) from exactly 1 down to exactly 0, strictly decreasing.

    ``shift > 1`` keeps sigma high for longer (more steps at high noise), ``shift = 1`` is linear.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be greater than 0, got {shift}")
    # float64 on the host, then one cast: s_0 = shift/shift and s_N = 0/1 come out exact, so the
    # flow-sde check "sigma == 1" and the cps "std == 0 at the last step" hold bit for bit.
    u = 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    sigmas = shift * u / (1.0 + (shift - 1.0) * u)
    return sigmas.to(device=device, dtype=torch.float32)


def flow_schedule(
    num_steps: int, shift: float, device: torch.device | str | None = None
) -> Schedule:
    """The :class:`~dance.interfaces.Schedule` of a flow sampler.

    ``timesteps`` are the sigmas the policy sees at each step (in [0, 1]; a policy that wants
    1000-scale timesteps converts them), ``levels`` are all ``N + 1`` sigmas.
    """
    sigmas = shifted_sigmas(num_steps, shift, device)
    return Schedule(timesteps=sigmas[:-1], levels=sigmas)
