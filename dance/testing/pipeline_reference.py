"""Comparing a policy with its diffusers pipeline: the pipeline's Euler sampling loop written over
``policy.predict``, so that a test can decode its result and compare it with the pipeline's
image from the same noise."""

from __future__ import annotations

import torch

from dance.interfaces import Conditioning, Policy


def euler_sample(
    policy: Policy, cond: Conditioning, noise: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler.step over ``sigmas`` [N + 1] (1 ... 0):
    x += (s_{k+1} - s_k) v, without gradients; returns the final latents."""
    x = noise
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            x = x + (sigmas[k + 1] - sigmas[k]) * policy.predict(x, sigmas[k : k + 1], cond)
    return x
