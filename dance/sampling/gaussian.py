"""Gaussian transitions of stochastic samplers: per-sample levels, noise and log-density.

Every stochastic sampler step draws ``x_next ~ N(mean, std^2)`` with one ``std`` per sample; these
helpers are what the built-in samplers share, for sampler plugins to reuse. The log-probability
follows DanceGRPO's and DDPO's convention: the Gaussian density of each element in fp32, averaged
over the non-batch elements (or summed).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dance.config import option

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def log_prob_reduction_option() -> Any:
    """The ``log_prob_reduction`` field of a stochastic sampler's config."""
    return option(
        "mean",
        "reduce the per-element log-density over non-batch dims by 'mean' (DanceGRPO) or 'sum'",
        choices=("mean", "sum"),
    )


def gather_levels(
    levels: torch.Tensor, step_index: torch.Tensor, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``levels[k]`` and ``levels[k + 1]`` as ``[B, 1, ...]``, broadcastable to
    ``ndim``-D latents, for the step indices ``k = step_index [B]``.

    A training micro-batch mixes steps, so levels are gathered per sample, never read as scalars.
    """
    idx = step_index.to(device=levels.device, dtype=torch.long)
    shape = (idx.shape[0],) + (1,) * (ndim - 1)
    return levels.index_select(0, idx).view(shape), levels.index_select(0, idx + 1).view(shape)


def draw_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal fp32 noise of ``like``'s shape, on ``like``'s device.

    Drawn on the generator's device, so that a CPU generator gives the same noise on any device.
    """
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(like.device)


def gaussian_log_prob(
    sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Log-density ``[B]`` of ``sample`` under ``N(mean, std^2)``, reduced over non-batch dims.

    ``std`` holds one value per sample (``[B, 1, ...]``). A sample with ``std == 0`` made a
    deterministic transition with no density: it gets log-prob 0 (a constant, so its importance
    ratio is 1 and it adds no gradient), never NaN or inf. Gradients flow through ``mean`` only.
    """
    batch = mean.shape[0]
    std_b = std.reshape(batch).float()
    stochastic = std_b > 0
    # 1 in place of a zero std before dividing: the masked-out branch of torch.where must carry
    # neither an inf value nor a NaN gradient.
    safe = torch.where(stochastic, std_b, torch.ones_like(std_b))
    sq = (sample.detach().float() - mean.float()).square().flatten(1)
    if reduction == "mean":
        sq, count = sq.mean(dim=1), 1
    elif reduction == "sum":
        sq, count = sq.sum(dim=1), sq.shape[1]
    else:
        raise ValueError(f"log_prob_reduction must be 'mean' or 'sum', got {reduction!r}")
    # The per-element density -(d^2)/(2 std^2) - log std - log sqrt(2 pi), reduced: the squared
    # error is reduced first, then scaled once per sample (one fewer pass over the latents).
    log_prob = -sq / (2.0 * safe.square()) - count * (safe.log() + _HALF_LOG_2PI)
    return torch.where(stochastic, log_prob, torch.zeros_like(log_prob))
