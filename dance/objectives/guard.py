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
``log r``.

Source: the paper's method section (its log-ratio decomposition, RatioNorm as s times the
bias-corrected log-ratio, equal to the inner product of the noise and the mean drift, and the
final objective with delta = 1 / dt on the clipped policy term only, the KL term unweighted),
checked against the flow_grpo GRPO-Guard training script and verl-omni's ``grpo_guard`` loss,
which compute the same two formulas. Where the paper is silent:

- under DanceGRPO's SDE (``dance-sde``) the mean moves by dt * beta_t * v with
  beta_t = 1 + eta^2 (1 - sigma) / (2 sigma), so 1 / dt leaves a beta_t factor that differs
  from step to step: the steps are equalised only approximately, as in the paper's Flow-GRPO
  setting they are exactly;
- under ``cps`` the mean is not linear in dt * v, so 1 / dt is a heuristic there;
- 1 / dt is about the number of steps: the policy term grows by that much against the KL term
  and ``trainer.max_grad_norm`` (lower the learning rate or raise the KL coefficient to keep
  the same balance).
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
