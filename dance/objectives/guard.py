"""GRPO-Guard's regulated clipping (Wang et al., arXiv 2510.22319), options of the `grpo` objective.

A stochastic step draws ``x' = mu_old + s * eps`` with ``s = sigma_t * sqrt(dt)`` (the step's
Gaussian std). Under a Gaussian policy the log importance ratio of that stored transition is

    log r = log p_theta(x') - log p_old(x') = <eps, dmu> / s - ||dmu||^2 / (2 s^2),
    dmu   = mu_theta - mu_old                       (the paper's analysis of the ratio)

so its mean, -||dmu||^2 / (2 s^2), is below 0 (the ratio sits left of 1 and PPO's clip never
catches positive-advantage updates) and its spread scales with 1 / s, which differs from step to
step. Both corrections come from the Gaussian transition of each (sample, step) pair itself: no
statistic over the batch, hence nothing to reduce over ranks (the result is the same on any
number of processes by construction).

- RatioNorm: add the mean bias back and rescale by the step's std,
      log r_hat = s * (log r + ||dmu||^2 / (2 s^2))   (= <eps, dmu>: centred on 0 at every step);
- gradient reweighting: the normalised ratio's gradient is <eps, d mu_theta>, and a
  flow SDE's mean moves by dt times the velocity, so the per-step gradient scales with dt; the
  policy term of step t is multiplied by delta_t = 1 / dt (the flow-matching case).

The norms and inner products are reduced over the latent elements exactly as the sampler reduces
its log-density ('mean', DanceGRPO's convention, or 'sum'), so that the bias cancels the one in
``log r``. The published implementations (verl-omni's ``grpo_guard`` loss, Flow-Factory's
``GRPOGuardTrainer``) compute the same two formulas.
"""

from __future__ import annotations

import torch

from dance.interfaces import Schedule


def normalized_log_ratio(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    new_mean: torch.Tensor,
    old_mean: torch.Tensor,
    std: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """GRPO-Guard's RatioNorm log-ratio ``[m]``: ``s * (log r + ||dmu||^2 / (2 s^2))``.

    ``new_log_prob, old_log_prob [m]`` are the transition's log-densities under the current and
    the old policy, ``new_mean, old_mean [m, *L]`` their Gaussian means (gradients flow through
    ``new_mean`` and ``new_log_prob``), ``std [m, 1, ...]`` the step's std ``s = sigma_t sqrt(dt)``.
    A pair with ``std == 0`` made a deterministic step with no density: its log-ratio is 0.
    """
    batch = new_mean.shape[0]
    s = std.reshape(batch).float()  # [m]
    stochastic = s > 0
    safe = torch.where(stochastic, s, torch.ones_like(s))  # no 0 divisor in the masked branch
    if reduction not in ("mean", "sum"):
        raise ValueError(f"log_prob_reduction must be 'mean' or 'sum', got {reduction!r}")
    sq = (new_mean.float() - old_mean.float()).square().flatten(1)  # [m, D] squared mean drift
    drift = sq.mean(dim=1) if reduction == "mean" else sq.sum(dim=1)  # [m] ||dmu||^2
    bias = drift / (2.0 * safe.square())  # [m] minus the mean of log r (its left shift)
    log_ratio = new_log_prob.float() - old_log_prob.float()  # [m] log r
    normalized = safe * (log_ratio + bias)  # [m] RatioNorm: s * (log r + bias)
    return torch.where(stochastic, normalized, torch.zeros_like(normalized))


def step_weights(schedule: Schedule, steps: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's gradient reweighting (flow-matching case): ``delta_t = 1 / dt`` ``[m]`` of
    the steps ``steps [m]``, ``dt = s_k - s_{k+1}`` from the flow schedule's sigma table."""
    levels = schedule.levels.to(device=steps.device, dtype=torch.float32)  # [N + 1] sigmas
    idx = steps.long()
    dt = levels[idx] - levels[idx + 1]  # [m] > 0 (sigmas decrease)
    return 1.0 / dt
