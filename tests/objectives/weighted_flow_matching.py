"""A third-party objective as docs/plugins.md shows it: advantage-weighted flow matching on the
final samples (a small cousin of DiffusionNFT, kept deliberately simple)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import dance
from dance.config import option


@dataclass
class WeightedFlowMatchingConfig:
    temperature: float = option(1.0, "advantages are weighted by exp(A / temperature)", gt=0)
    timesteps: int = option(3, "forward-process timesteps trained per sample", ge=1)


class WeightedFlowMatching(dance.Objective):
    """Loss exp(A / tau) * |v_theta(x_t, t) - (noise - x0)|^2 on the rollout's final samples."""

    name = "weighted-flow-matching"
    config_class = WeightedFlowMatchingConfig
    keeps = "samples"
    sampler_requirement = "any sampler"

    def train_units(self, rollout):
        return torch.arange(self.config.timesteps), self.config.timesteps

    def loss(self, rollout, batch):
        x0 = rollout.samples[batch.rows]  # [m, *L]
        # Noise and t keyed by (seed, iteration, sample, unit): any number of processes agrees.
        draws = [
            torch.Generator().manual_seed(hash((self.context.seed, batch.iteration, s, u)) % 2**62)
            for s, u in zip(batch.samples.tolist(), batch.units.tolist(), strict=True)
        ]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in draws])
        t = (batch.units.float() + 0.5) / self.config.timesteps  # [m] in (0, 1)
        tb = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - tb) * x0 + tb * noise
        v = self.context.policy.predict(x_t, t, rollout.cond.select(batch.rows))
        error = ((v - (noise - x0)) ** 2).flatten(1).mean(dim=1)  # [m]
        return torch.exp(batch.advantages / self.config.temperature).clamp(max=10.0) * error


@dance.hookimpl
def register_objectives(register):
    register(WeightedFlowMatching)
