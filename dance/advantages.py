"""Built-in advantage estimators: per-group and whole-batch normalisation.

GRPO (Shao et al. 2024, DeepSeekMath) normalises each reward within the group of samples drawn for
the same prompt: A = (r - mean_g) / (std_g + eps). DanceGRPO (arXiv 2505.07818) combines several
rewards by the weighted sum of their per-reward advantages; flow_grpo normalises the weighted sum of
the rewards instead. Both are offered (``combine``), followed by clamping to +-clip.

A NaN reward marks an excluded sample: it is left out of the statistics and its advantage is NaN,
which the trainer reads as "do not train on this sample".

The core registers these through the same ``dance`` entry point group as any plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dance.config import option
from dance.hookspecs import hookimpl
from dance.interfaces import Advantage


@dataclass
class NormalisedAdvantageConfig:
    combine: str = option(
        "advantages",
        "how several rewards combine: 'advantages' = weighted sum of per-reward normalised "
        "advantages (DanceGRPO), 'rewards' = normalise the weighted sum of rewards (flow_grpo)",
        choices=("advantages", "rewards"),
    )
    clip: float = option(5.0, "clamp advantages to [-clip, clip] (DanceGRPO's adv_clip_max)", gt=0)
    std: str = option(
        "unbiased",
        "standard deviation estimator within a group: 'unbiased' (n - 1, as torch.std in "
        "DanceGRPO) or 'biased' (n, as numpy.std in flow_grpo)",
        choices=("unbiased", "biased"),
    )
    eps: float = option(1e-8, "added to the standard deviation before dividing", ge=0)


def normalise_within_groups(
    values: torch.Tensor, group_ids: torch.Tensor, unbiased: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(v - mean_g) / (std_g + eps) for every sample, with NaN values excluded from the statistics.

    ``values [N]`` and ``group_ids [N]`` (any integers). A group of one sample, or a group whose
    values are all equal, gets advantage 0, never NaN. Excluded (NaN) samples stay NaN.
    """
    values = values.double()
    _, group = torch.unique(group_ids, return_inverse=True)  # [N], groups numbered 0..G-1
    num_groups = int(group.max().item()) + 1 if group.numel() else 0
    valid = torch.isfinite(values)
    v = torch.where(valid, values, torch.zeros_like(values))
    count = torch.zeros(num_groups, dtype=torch.float64, device=values.device)
    count.index_add_(0, group, valid.double())
    total = torch.zeros_like(count).index_add_(0, group, v)
    mean = total / count.clamp(min=1)  # [G]
    centred = torch.where(valid, values - mean[group], torch.zeros_like(values))
    sq = torch.zeros_like(count).index_add_(0, group, centred**2)
    dof = (count - 1) if unbiased else count
    # Groups with too few samples have no spread to normalise by: their advantage is 0.
    std = torch.where(dof > 0, (sq / dof.clamp(min=1)).sqrt(), torch.zeros_like(sq))
    adv = centred / (std[group] + eps)
    return torch.where(valid, adv, torch.full_like(adv, float("nan"))).float()


class _NormalisedAdvantage(Advantage):
    config_class = NormalisedAdvantageConfig

    def _groups(self, group_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(
        self,
        rewards: Mapping[str, torch.Tensor],
        weights: Mapping[str, float],
        group_ids: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.config
        groups = self._groups(group_ids)
        unbiased = cfg.std == "unbiased"
        if cfg.combine == "rewards":
            total = sum(weights[name] * r.double() for name, r in rewards.items())
            adv = normalise_within_groups(total, groups, unbiased, cfg.eps)
        else:
            adv = sum(
                weights[name] * normalise_within_groups(r, groups, unbiased, cfg.eps).double()
                for name, r in rewards.items()
            ).float()
        return adv.clamp(-cfg.clip, cfg.clip)  # clamp keeps NaN: excluded samples stay excluded


class GroupAdvantage(_NormalisedAdvantage):
    """Normalise within each prompt's group (GRPO)."""

    name = "group"

    def _groups(self, group_ids: torch.Tensor) -> torch.Tensor:
        return group_ids


class BatchAdvantage(_NormalisedAdvantage):
    """Normalise over the whole gathered batch (one group), as a global-baseline alternative."""

    name = "batch"

    def _groups(self, group_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(group_ids)


@hookimpl
def register_advantages(register):  # noqa: ANN001 - the hook's callback
    register(GroupAdvantage)
    register(BatchAdvantage)
