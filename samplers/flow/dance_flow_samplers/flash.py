"""MixGRPO-Flash's ODE steps after the SDE window: fewer of them, with a second-order solver.

Follows MixGRPO (Li et al., 2025, arXiv 2507.21802, section "MixGRPO-Flash"): after the window's
last SDE step ``L``, the remaining steps are rebuilt over the same time range with a fraction
``r`` of their count (0.4 in the published runs), the time shift applied as for the full schedule;
and they are taken with the second-order multistep DPM-Solver++ (Lu et al., 2022, "DPM-Solver++",
arXiv 2211.01095, Algorithm 2, the "2M" solver in data prediction), which reuses the clean
prediction of the step before.

For a rectified flow ``x_s = (1 - s) x0 + s eps``: alpha = 1 - s, lambda = log(alpha / s), and the
data prediction is ``x0 = x - s v``.
"""

from __future__ import annotations

import torch

ODE_SOLVERS = ("euler", "dpmsolver++2m")


def compressed_tail_sigmas(num_steps: int, shift: float, stop: int, ratio: float) -> torch.Tensor:
    """Sigmas ``[M]`` from level ``stop`` (the first after the window) down to exactly 0.

    The unshifted times ``u`` of the full schedule are ``1 - k / N``; the tail keeps
    ``M = max(int((N - stop + 1) * ratio), 2)`` times spread evenly from ``u_stop`` to 0 (at
    least one step, so the schedule still ends at sigma 0), then shifted like the full schedule.
    MixGRPO counts the steps after the last SDE step ``L = stop - 1`` the same way,
    ``int((N - L) * ratio)``.
    """
    count = max(int((num_steps - stop + 1) * ratio), 2)
    u = torch.linspace(1.0 - stop / num_steps, 0.0, count, dtype=torch.float64)
    sigmas = shift * u / (1.0 + (shift - 1.0) * u)
    return sigmas.to(torch.float32)


def _log_snr(s: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma: -inf at sigma 1, +inf at sigma 0."""
    return torch.log1p(-s) - torch.log(s)


def dpm_solver_2m_mean(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    s_prev: torch.Tensor,
    s: torch.Tensor,
    s_next: torch.Tensor,
) -> torch.Tensor:
    """One deterministic DPM-Solver++(2M) step from level ``s`` to ``s_next`` (all fp32).

    ``x0`` is this step's data prediction and ``x0_prev`` the step before's (at ``s_prev``).
    With h = lambda_next - lambda, r = (lambda - lambda_prev) / h:
    ``x_next = (s_next / s) x - alpha_next (exp(-h) - 1) (x0 + (x0 - x0_prev) / (2 r))``.
    The last step (s_next = 0) is first order, x_next = x0 (DPM-Solver++'s lower-order final
    step); so is a step whose previous level is sigma 1 (no usable history: r is infinite).
    """
    lam, lam_next, lam_prev = _log_snr(s), _log_snr(s_next), _log_snr(s_prev)
    h = lam_next - lam
    r = (lam - lam_prev) / h
    correction = torch.where(torch.isfinite(r), (x0 - x0_prev) / (2.0 * r), torch.zeros_like(x0))
    data = x0 + correction
    # -alpha_next (exp(-h) - 1) = alpha_next - s_next * alpha / s: finite for s_next = 0 too.
    alpha, alpha_next = 1.0 - s, 1.0 - s_next
    step = (s_next / s) * x + (alpha_next - s_next * alpha / s) * data
    return torch.where(s_next > 0, step, x0)
