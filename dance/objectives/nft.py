"""DiffusionNFT: negative-aware fine-tuning on the forward process (Zheng et al., arXiv 2509.16117;
reference code NVlabs/DiffusionNFT, ``scripts/train_nft_sd3.py``).

No log-probabilities and no trajectory: the rollout keeps only its final clean samples x0, drawn
with the *sampling* ("old") policy theta_old by any solver (the deterministic ODE included). Each
trained (sample i, unit k) pair is a forward-process timestep t = sigma_k of the rollout's
schedule. With eps ~ N(0, I) keyed by (seed, iteration, sample, unit):

    x_t   = (1 - t) x0 + t eps                       forward (rectified-flow) noising
    v     = v_theta(x_t, t, c),  v_old = v_old(x_t, t, c)   (v_old without gradient)
    v+    = (1 - beta) v_old + beta v                implicit positive policy
    v-    = (1 + beta) v_old - beta v                implicit negative policy
    r     = clip(A, -C, C) / (2C) + 1/2              optimality probability in [0, 1]
    L     = C / beta * (r * l(v+) + (1 - r) * l(v-))   [+ kl_coef * mean |v - v_ref|^2]

where l(u) is the flow-matching loss of velocity u written on the clean-sample prediction
x0(u) = x_t - t u, divided by its detached per-sample mean absolute error (the paper's adaptive
loss weighting): l(u) = mean((x0(u) - x0)^2) / sg(mean|x0(u) - x0|). Minimising L moves v
towards the high-reward samples and away from the low-reward ones; at beta -> 0 both implicit
policies are v_old and the update direction is the reward-weighted flow-matching contrast.

After the iteration's last optimizer step the sampling policy takes the paper's soft update
theta_old <- eta * theta_old + (1 - eta) * theta with eta = min(rate * (s - flat), eta_max) after
s optimizer steps (0 before ``flat`` steps): the reference code's ``return_decay``.

No classifier-free guidance: the policy trains and samples with the conditional model alone (see
docs/objectives.md for policies with true CFG). Flow (velocity) policies only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

import dance.distributed as dist
from dance.config import option
from dance.errors import ConfigError
from dance.interfaces import Objective, Rollout, Sampler, TrainBatch, TrainingContext
from dance.sampling.generate import noise_from_seeds
from dance.training.ema import EMA
from dance.training.sharding import reshard


@dataclass
class NFTConfig:
    beta: float = option(
        1.0,
        "strength beta of the implicit policies v+- = v_old +- beta (v - v_old); the loss is "
        "divided by it (DiffusionNFT: 1.0, 0.1 for OCR and multi-reward)",
        gt=0,
    )
    adv_clip_max: float = option(
        5.0,
        "advantages are clipped to [-C, C] and mapped to the optimality probability "
        "r = A / (2C) + 1/2; the loss is multiplied by C (DiffusionNFT: 5)",
        gt=0,
    )
    timestep_fraction: float = option(
        0.99,
        "fraction of the rollout schedule's timesteps each sample trains on, distinct and at "
        "random (DiffusionNFT: 0.99, i.e. 9 of 10)",
        gt=0,
        le=1,
    )
    adaptive_weighting: bool = option(
        True,
        "divide each sample's flow-matching loss by its detached mean absolute error of the "
        "clean-sample prediction (DiffusionNFT's adaptive weighting); false = plain velocity MSE",
    )
    kl_coef: float = option(
        0.0,
        "weight of mean |v - v_ref|^2 to the frozen reference model (DiffusionNFT's SD3.5 runs: "
        "1e-4); costs one more forward per pair",
        ge=0,
    )
    decay_rate: float = option(
        0.001,
        "soft update of the sampling policy: eta grows by this per optimizer step "
        "(DiffusionNFT decay_type 1: 0.001; type 2: 0.0075)",
        ge=0,
    )
    decay_max: float = option(
        0.5,
        "the cap of eta in theta_old <- eta theta_old + (1 - eta) theta (type 1: 0.5; type 2: "
        "0.999); 0 = sample with the trained weights (on-policy)",
        ge=0,
        lt=1,
    )
    decay_flat: int = option(
        0,
        "optimizer steps during which eta stays 0 before it grows (type 1: 0; type 2: 75)",
        ge=0,
    )


def old_policy_decay(step: int, config: NFTConfig) -> float:
    """eta after ``step`` optimizer steps: the reference code's ``return_decay`` schedule,
    eta = 0 while step < flat, then min(rate * (step - flat), eta_max)."""
    if step < config.decay_flat:
        return 0.0
    return min(config.decay_rate * (step - config.decay_flat), config.decay_max)


def optimality_probability(advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """r ``[m]`` in [0, 1] from advantages ``[m]``: clip to [-C, C], then r = A / (2C) + 1/2
    (the reference code's normalisation of the clipped advantage)."""
    return (advantages.clamp(-clip, clip) / clip / 2 + 0.5).clamp(0, 1)


def nft_losses(
    v: torch.Tensor,
    v_old: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    config: NFTConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample flow-matching losses ``([m], [m])`` of the implicit positive and negative
    policies for current velocities ``v [m, *L]`` (with gradient), the sampling policy's
    ``v_old [m, *L]``, clean samples ``x0``, noised ``xt`` and timesteps ``t [m]``."""
    beta = config.beta
    v_old = v_old.detach()
    v_pos = (1 - beta) * v_old + beta * v  # implicit positive policy v+
    v_neg = (1 + beta) * v_old - beta * v  # implicit negative policy v-
    return _flow_matching(v_pos, x0, xt, t, config), _flow_matching(v_neg, x0, xt, t, config)


def _flow_matching(
    u: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, config: NFTConfig
) -> torch.Tensor:
    """Flow-matching loss ``[m]`` of velocity ``u [m, *L]`` for the pair (x0, x_t)."""
    dims = tuple(range(1, x0.ndim))
    # x0(u) - x0 with x0(u) = x_t - t u; it equals t ((eps - x0) - u)   [m, *L]
    error = xt - _expand(t, x0) * u - x0
    if not config.adaptive_weighting:  # |u - (eps - x0)|^2: plain rectified-flow matching
        return ((error / _expand(t, x0)) ** 2).mean(dim=dims)
    with torch.no_grad():  # adaptive weight: sg(mean |x0(u) - x0|), in float64 as the code
        scale = error.double().abs().mean(dim=dims).clamp_min(1e-5)  # [m]
    return ((error**2).mean(dim=dims).double() / scale).float()


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)  # [m, 1, ...]


class NFTObjective(Objective):
    """DiffusionNFT: reward-weighted flow matching of implicit positive and negative policies on
    forward-noised final samples, with a softly updated sampling policy."""

    name = "nft"
    config_class = NFTConfig
    keeps = "samples"
    sampler_requirement = "any flow sampler, deterministic (ode) included"

    def __init__(self, config: NFTConfig, runtime: Any) -> None:
        super().__init__(config, runtime)
        self.optimizer_steps = 0  # over the whole run: the decay schedule's clock (resumed)
        self._prepared: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._stats = _Stats(runtime.device)

    @classmethod
    def check_sampler(
        cls, config: NFTConfig, sampler_cls: type[Sampler], sampler_config: Any
    ) -> None:
        if "flow" not in sampler_cls.prediction_types:
            raise ConfigError(
                f"objective 'nft' trains flow (velocity) policies by rectified-flow matching; "
                f"sampler '{sampler_cls.name}' is for {', '.join(sampler_cls.prediction_types)} "
                "models: use a flow policy with a flow sampler (e.g. sampler.name=ode), or "
                "objective.name=grpo"
            )

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def bind(self, context: TrainingContext) -> None:
        super().bind(context)
        policy = context.policy
        if policy.prediction_type != "flow":
            raise ConfigError(
                f"objective 'nft' needs a flow (velocity) policy; policy '{policy.name}' predicts "
                f"{policy.prediction_type}: use objective.name=grpo with it"
            )
        # The sampling policy theta_old: a copy of every trained parameter, shaped and sharded
        # like it (dance.training.ema's per-parameter copies), starting equal to the trained
        # weights.
        self._old = EMA(policy.trainable_parameters(), decay=0.0)

    def train_units(self, rollout: Rollout) -> tuple[torch.Tensor, int]:
        # The reference trains each sample on int(N * fraction) distinct timesteps of the
        # sampling schedule, drawn at random (a random permutation per sample).
        n = rollout.schedule.num_steps
        return torch.arange(n), max(1, int(n * self.config.timestep_fraction))

    @contextlib.contextmanager
    def rollout_weights(self) -> Iterator[None]:
        """The sampling policy's weights in the trained parameters, then the trained ones back.
        Under FSDP2 each swap also drops the gathered copies a forward left behind, so the next
        forward reads the swapped weights."""
        modules = self.context.policy.trainable_modules()
        with self._old.applied():
            reshard(modules)
            try:
                yield
            finally:
                reshard(modules)

    def shadow_weights(self) -> dict[str, list[torch.Tensor]]:
        return {"nft_old": self._old.shadow}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer_steps = int(state.get("optimizer_steps", 0))

    # ---- the update ---------------------------------------------------------------------------

    def forward_noised(self, rollout: Rollout, batch: TrainBatch) -> torch.Tensor:
        """x_t ``[m, *L]`` (fp32) = (1 - t) x0 + t eps for the batch's pairs, eps keyed by
        (seed, iteration, global sample index, unit): the same on any rank layout."""
        seed, it = self.context.seed, batch.iteration
        keys = zip(batch.samples.tolist(), batch.units.tolist(), strict=True)
        seeds = [((seed * 1_000_003 + it) * 15_485_863 + s) * 1_031 + k + 17 for s, k in keys]
        eps = noise_from_seeds(self.context.policy, seeds).float()  # [m, *L]
        x0 = rollout.samples[batch.rows].float()  # [m, *L]
        t = _expand(rollout.schedule.timesteps[batch.units].float(), x0)  # [m, 1, ...]
        return (1 - t) * x0 + t * eps

    def _predict(self, rollout: Rollout, batch: TrainBatch, xt: torch.Tensor) -> torch.Tensor:
        t = rollout.schedule.timesteps[batch.units]  # [m] sigma in [0, 1]
        cond = rollout.cond.select(batch.rows)
        return self.context.policy.predict(xt.to(rollout.samples.dtype), t, cond)  # [m, *L]

    def begin_update(self, rollout: Rollout, batches: list[list[TrainBatch]]) -> None:
        """x_t and v_old of every micro-batch this rank trains, with one swap to the sampling
        weights for the whole iteration (they change only after its last optimizer step)."""
        self._prepared = {}
        with torch.no_grad(), self.rollout_weights():
            for step_batches in batches:
                for b in step_batches:
                    xt = self.forward_noised(rollout, b)  # [m, *L]
                    self._prepared[b.window, b.index] = (xt, self._predict(rollout, b, xt))

    def loss(self, rollout: Rollout, batch: TrainBatch) -> torch.Tensor:
        cfg = self.config
        xt, v_old = self._prepared.pop((batch.window, batch.index))  # [m, *L] each
        x0 = rollout.samples[batch.rows].float()  # [m, *L]
        t = rollout.schedule.timesteps[batch.units].float()  # [m]
        v = self._predict(rollout, batch, xt)  # [m, *L] v_theta, with gradient
        r = optimality_probability(batch.advantages, cfg.adv_clip_max)  # [m]
        positive, negative = nft_losses(v, v_old, x0, xt, t, cfg)  # [m], [m]
        # L = C / beta * (r l(v+) + (1 - r) l(v-)): the reference's policy loss, scaled by C
        policy_loss = (r * positive + (1 - r) * negative) / cfg.beta * cfg.adv_clip_max
        dims = tuple(range(1, v.ndim))
        kl = torch.zeros_like(policy_loss)
        if cfg.kl_coef > 0:  # mean |v - v_ref|^2 to the frozen base model
            with torch.no_grad(), self.context.policy.reference():
                v_ref = self._predict(rollout, batch, xt)
            kl = ((v - v_ref) ** 2).mean(dim=dims)
        total = policy_loss + cfg.kl_coef * kl  # [m]
        old_gap = ((v.detach() - v_old) ** 2).mean(dim=dims)  # how far theta is from theta_old
        self._stats.add(batch.weight, total, positive, negative, r, kl, old_gap)
        return total

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    def end_update(self) -> None:
        """theta_old <- eta theta_old + (1 - eta) theta (the paper's soft update), once per
        iteration after its last optimizer step (also without one) as the reference does, with
        eta from the optimizer step count so far."""
        self._old.decay = old_policy_decay(self.optimizer_steps, self.config)
        self._old.update()
        self._stats.decay = self._old.decay

    def metrics(self) -> dict[str, float]:
        out = self._stats.summary()
        self._stats = _Stats(self.runtime.device)
        return out


class _Stats:
    """Sums over this rank's trained (non-padding) pairs, reduced over every rank."""

    NAMES = ("loss", "loss/positive", "loss/negative", "r/mean", "kl", "old_gap")

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.NAMES) + 1, dtype=torch.float64, device=device)
        self.decay = 0.0

    def add(self, mask: torch.Tensor, *values: torch.Tensor) -> None:
        rows = [v.detach()[mask].double().sum() for v in values]
        self.sums += torch.stack([mask.sum().double(), *rows])

    def summary(self) -> dict[str, float]:
        pairs, *sums = dist.all_reduce(self.sums.clone()).tolist()
        means = [s / pairs if pairs else 0.0 for s in sums]
        out = dict(zip(self.NAMES, means, strict=True))
        out["old_decay"] = self.decay
        return out
