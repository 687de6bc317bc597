"""DanceGRPO's clipped-ratio objective (arXiv 2505.07818, eq. 6; the PPO surrogate of Flow-GRPO).

For each trained (sample i, step k) pair, with the stored transition x_k -> x_{k+1}:

    ratio = exp(log p_theta(x_{k+1} | x_k) - log p_old(x_{k+1} | x_k))
    loss  = max(-A_i * ratio, -A_i * clip(ratio, 1 - eps, 1 + eps)) + beta * KL

where A_i is the sample's advantage, eps ``clip_range``, and KL the closed form between the current
and the frozen reference model's Gaussian transitions (flow_grpo's ``kl_loss``). The rollout keeps
every latent and each transition's log-probability; a unit is a sampling step.

GRPO-Guard (arXiv 2510.22319) is two options, off by default: ``ratio_norm`` clips RatioNorm's
normalised ratio instead of ``ratio``, ``gradient_reweight`` multiplies the clipped term by 1 / dt
of the step (the formulas are in :mod:`dance.objectives.guard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import dance.distributed as dist
from dance.config import option
from dance.errors import ConfigError
from dance.interfaces import (
    Objective,
    Rollout,
    Runtime,
    Sampler,
    Schedule,
    StepOutput,
    TrainBatch,
)
from dance.objectives.guard import normalized_log_ratio, step_weights


@dataclass
class GRPOConfig:
    clip_range: float = option(1e-4, "PPO clip range eps on the importance ratio", gt=0)
    kl_coef: float = option(0.0, "weight of the KL penalty to the frozen reference model", ge=0)
    timestep_fraction: float = option(
        0.6, "fraction of each trajectory's steps trained on, drawn at random", gt=0, le=1
    )
    train_last_step: bool = option(False, "allow the last sampling step among the trained steps")
    old_log_probs: str = option(
        "recompute",
        "log-probs the ratio is taken against: 'recompute' = with the current weights in the "
        "training layout before the first optimizer step (ratio exactly 1 there, also in bf16); "
        "'rollout' = those stored during the rollout (cheaper; exact only when rollout and "
        "training numerics agree)",
        choices=("recompute", "rollout"),
    )
    ratio_norm: bool = option(
        False,
        "GRPO-Guard's RatioNorm (arXiv 2510.22319): clip the normalised ratio "
        "exp(s * (log r + ||mu - mu_old||^2 / (2 s^2))), s the step's std, centred on 1 at every "
        "step, instead of exp(log r); needs the old policy's means, so the old log-probs and "
        "means are recomputed in the training layout whatever old_log_probs says",
    )
    gradient_reweight: bool = option(
        False,
        "GRPO-Guard's gradient reweighting (arXiv 2510.22319, flow matching): multiply each "
        "pair's clipped policy term by 1 / dt, dt = sigma_k - sigma_{k+1} of its step, so every "
        "noise level moves the weights alike (flow samplers only; exact for flow-sde, "
        "approximate for dance-sde and cps; the policy term grows about num_steps-fold against "
        "the KL term)",
    )

    def recompute_old(self) -> bool:
        """Whether the old log-probs (and, for RatioNorm, means) are recomputed before the first
        optimizer step rather than read from the rollout."""
        return self.old_log_probs == "recompute" or self.ratio_norm


class GRPOObjective(Objective):
    """DanceGRPO's clipped importance-ratio objective on stored SDE transitions (the default)."""

    name = "grpo"
    config_class = GRPOConfig
    keeps = "trajectory"
    sampler_requirement = "a stochastic sampler (its SDE steps are the trained units)"

    def __init__(self, config: GRPOConfig, runtime: Any) -> None:
        super().__init__(config, runtime)
        # (window, micro-batch) -> old log-probs [m] and, with RatioNorm, old means [m, *L]
        self._old: dict[tuple[int, int], torch.Tensor] = {}
        self._old_mean: dict[tuple[int, int], torch.Tensor] = {}
        self._stats = _Stats(runtime.device)

    @classmethod
    def check_sampler(
        cls, config: GRPOConfig, sampler_cls: type[Sampler], sampler_config: Any
    ) -> None:
        if not sampler_cls.stochastic:
            raise ConfigError(
                f"sampler '{sampler_cls.name}' is deterministic and has no transition density to "
                "train with; choose a stochastic sampler (e.g. dance-sde), or an objective that "
                "trains on final samples (objective.name=nft)."
            )
        if config.gradient_reweight and "flow" not in sampler_cls.prediction_types:
            raise ConfigError(
                f"objective.gradient_reweight=true weights steps by 1 / dt of a flow schedule's "
                f"sigmas; sampler '{sampler_cls.name}' is not a flow sampler: choose one (e.g. "
                "flow-sde) or set objective.gradient_reweight=false"
            )
        sampler = sampler_cls(sampler_config, Runtime())  # stateless and cheap: check it now
        _trainable_steps(sampler, sampler.schedule(), config.train_last_step)

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def train_units(self, rollout: Rollout) -> tuple[torch.Tensor, int]:
        steps = _trainable_steps(rollout.sampler, rollout.schedule, self.config.train_last_step)
        return steps, max(1, int(self.config.timestep_fraction * steps.numel()))

    # ---- the update ---------------------------------------------------------------------------

    def begin_update(self, rollout: Rollout, batches: list[list[TrainBatch]]) -> None:
        """Old log-probs (and means) in the training layout (see GRPOConfig.old_log_probs and
        ratio_norm). In the first optimizer step no weight has changed yet, so the forward of the
        update gives them."""
        self._old, self._old_mean = {}, {}
        if not self.config.recompute_old():
            return
        assert rollout.log_probs is not None
        drift = self._stats.drift
        with torch.no_grad():
            for step_batches in batches[1:]:
                for b in step_batches:
                    out = self.transition(rollout, b.rows, b.units)
                    old = out.log_prob  # [m]
                    self._old[b.window, b.index] = old
                    if self.config.ratio_norm:
                        self._old_mean[b.window, b.index] = out.mean  # [m, *L]
                    diff = (old - rollout.log_probs[b.rows, b.units]).abs()[b.weight]
                    if diff.numel():
                        drift = torch.maximum(drift, diff.max())
        self._stats.drift = drift

    def loss(self, rollout: Rollout, batch: TrainBatch) -> torch.Tensor:
        cfg = self.config
        i, s, weight = batch.rows, batch.units, batch.weight
        assert rollout.log_probs is not None
        out = self.transition(rollout, i, s)
        new_lp = out.log_prob  # [m]
        kl = self._kl(rollout, i, s, out) if cfg.kl_coef > 0 else torch.zeros_like(new_lp)
        if not cfg.recompute_old():
            old_lp = rollout.log_probs[i, s]  # [m]
        elif batch.window == 0:
            old_lp = new_lp.detach()
        else:
            old_lp = self._old[batch.window, batch.index]
        if batch.window == 0:  # no weight changed yet: compare with the rollout's log-probs
            first_dev = (new_lp.detach() - rollout.log_probs[i, s]).abs()[weight]
            if first_dev.numel():
                self._stats.drift = torch.maximum(self._stats.drift, first_dev.max())
        if cfg.ratio_norm:
            ratio = torch.exp(self._normalized_log_ratio(rollout, batch, out, old_lp))  # [m]
        else:
            ratio = torch.exp(new_lp - old_lp)  # [m]
        a = batch.advantages  # [m]
        clipped = torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        policy_loss = torch.maximum(-a * ratio, -a * clipped)  # [m]
        if cfg.gradient_reweight:  # GRPO-Guard: delta_t * the clipped term (not the KL)
            policy_loss = policy_loss * step_weights(rollout.schedule, s)
        self._stats.add_pairs(
            ratio.detach(),
            weight,
            policy_loss.detach(),
            kl.detach(),
            batch.window == 0,
            cfg.clip_range,
        )
        return policy_loss + cfg.kl_coef * kl

    def _normalized_log_ratio(
        self, rollout: Rollout, batch: TrainBatch, out: StepOutput, old_lp: torch.Tensor
    ) -> torch.Tensor:
        """GRPO-Guard's RatioNorm log-ratio ``[m]`` against the old policy's means: in the first
        optimizer step the current ones (no weight changed yet), later those recomputed in
        :meth:`begin_update`."""
        if batch.window == 0:
            old_mean = out.mean.detach()  # [m, *L]
        else:
            old_mean = self._old_mean[batch.window, batch.index]
        # Samplers built on dance.sampling.gaussian reduce the log-density as their config says; the
        # drift's reduction must match it for the bias to cancel the one in log r.
        reduction = getattr(rollout.sampler.config, "log_prob_reduction", "mean")
        return normalized_log_ratio(out.log_prob, old_lp, out.mean, old_mean, out.std, reduction)

    def transition(self, rollout: Rollout, i: torch.Tensor, s: torch.Tensor) -> StepOutput:
        """Recompute the stored transitions x_s -> x_{s+1} of rows ``i [m]`` under the current
        weights; ``.log_prob [m]`` is their log-probability."""
        assert rollout.trajectory is not None
        x = rollout.trajectory[i, s]  # [m, *L]
        t = rollout.schedule.timesteps[s]  # [m]
        v = self.context.policy.predict(x, t, rollout.cond.select(i))  # [m, *L]
        x_next = rollout.trajectory[i, s + 1]  # [m, *L]
        return rollout.sampler.step(v, x, s, rollout.schedule, next_latents=x_next)

    def _kl(
        self, rollout: Rollout, i: torch.Tensor, s: torch.Tensor, out: StepOutput
    ) -> torch.Tensor:
        """KL ``[m]`` from the frozen reference's transition to the current one. Both Gaussians
        share their std, so it is |mean - mean_ref|^2 / (2 std^2), averaged over elements as
        flow_grpo's kl_loss."""
        with torch.no_grad(), self.context.policy.reference():
            ref = self.transition(rollout, i, s)
        dims = tuple(range(1, out.mean.ndim))
        std = out.std.float().clamp_min(1e-12)
        return ((out.mean - ref.mean) ** 2 / (2 * std**2)).mean(dim=dims)

    def metrics(self) -> dict[str, float]:
        out = self._stats.summary()
        self._stats = _Stats(self.runtime.device)
        return out


def _trainable_steps(sampler: Sampler, schedule: Schedule, train_last_step: bool) -> torch.Tensor:
    """The steps ``[T_max]`` GRPO may train: random transitions only (a sampler that mixes SDE
    and ODE steps has no log-probability on its ODE steps), the last one only on request."""
    candidates = sampler.noisy_steps(schedule).cpu().clone()  # [N] bool
    if not train_last_step:
        candidates[-1] = False
    steps = torch.nonzero(candidates).squeeze(1)  # [T_max]
    if steps.numel() < 1:
        raise ConfigError(
            "no sampling step can be trained: the last step is excluded (set "
            "objective.train_last_step=true or raise sampler.num_steps) and the sampler's "
            "other steps are deterministic"
        )
    return steps


class _Stats:
    """Update statistics of one iteration: sums, counts and extremes over this rank's trained
    pairs, reduced over every rank in :meth:`summary` (so the logs describe the whole job)."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.pairs = zero.clone()
        self.loss_sum, self.kl_sum, self.ratio_sum, self.clipped = (zero.clone() for _ in "1234")
        self.ratio_min = torch.full((), float("inf"), dtype=torch.float64, device=device)
        self.ratio_max = torch.full((), -float("inf"), dtype=torch.float64, device=device)
        self.first_dev = zero.clone()  # max |ratio - 1| over the first optimizer step's pairs
        self.drift = torch.zeros((), device=device)  # max |new log-prob - rollout log-prob|

    def add_pairs(
        self,
        ratio: torch.Tensor,
        mask: torch.Tensor,
        loss: torch.Tensor,
        kl: torch.Tensor,
        first_window: bool,
        clip_range: float,
    ) -> None:
        r = ratio[mask].double()  # [k] the trained (non-padding) pairs
        if not r.numel():
            return
        self.pairs += r.numel()
        self.loss_sum += loss[mask].double().sum()
        self.kl_sum += kl[mask].double().sum()
        self.ratio_sum += r.sum()
        self.clipped += ((r - 1).abs() > clip_range).sum()
        self.ratio_min = torch.minimum(self.ratio_min, r.min())
        self.ratio_max = torch.maximum(self.ratio_max, r.max())
        if first_window:
            self.first_dev = torch.maximum(self.first_dev, (r - 1).abs().max())

    def summary(self) -> dict[str, float]:
        sums = dist.all_reduce(
            torch.stack([self.pairs, self.loss_sum, self.kl_sum, self.ratio_sum, self.clipped])
        )
        pairs, loss, kl, ratio, clipped = sums.tolist()
        ratio_min = dist.all_reduce(self.ratio_min, "min").item()
        highs = torch.stack([self.ratio_max, self.first_dev, self.drift.double()])
        ratio_max, first_dev, drift = dist.all_reduce(highs, "max").tolist()
        return {
            "loss": loss / pairs if pairs else 0.0,
            "kl": kl / pairs if pairs else 0.0,
            "ratio/mean": ratio / pairs if pairs else 1.0,
            "ratio/min": ratio_min if pairs else 1.0,
            "ratio/max": ratio_max if pairs else 1.0,
            "ratio/first_step_max_dev": first_dev,
            "clip_fraction": clipped / pairs if pairs else 0.0,
            "rollout_logprob_drift": drift,
        }
