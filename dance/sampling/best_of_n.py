"""Best-of-N, the two ways DanceGRPO uses it.

Training: roll out ``N`` samples per prompt, let all of them set the group statistics, but update
only on the ``k/2`` samples of each group with the highest advantage and the ``k/2`` with the
lowest (DanceGRPO's HunyuanVideo setting: 24 rolled out, 8 trained). The extremes carry most of
the signal, and the update, the expensive phase, then costs ``k`` samples instead of ``N``.

Inference: draw ``N`` candidates per prompt and keep the one a reward likes best
(``dance sample --best-of N``).

The selection runs on the gathered advantages ``[P*G]``, which every rank holds identically, so
every rank computes the same choice without communicating even when a group spans ranks; each
rank then trains the chosen samples it holds (:mod:`dance.training.layout`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from dance.errors import RewardError
from dance.interfaces import Policy, Prompt, Reward, Sampler
from dance.sampling.generate import generate

if TYPE_CHECKING:  # a type only: sampling imports nothing from training
    from dance.training.run_config import RewardSpec


def select_extremes(advantages: torch.Tensor, group_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Mask ``[n]`` of the ``k // 2`` highest- and ``k // 2`` lowest-advantage samples per group.

    ``advantages [n]`` are the combined advantages (after weighting several rewards);
    ``group_ids [n]`` say which group each sample belongs to. Non-finite advantages (samples
    excluded after a reward failure) are never selected; a group with at most ``k`` finite
    samples keeps them all. Ties break by position, lower index first, so every rank agrees.
    """
    if k < 2 or k % 2:
        raise ValueError(f"k must be an even number of at least 2, got {k}")
    if advantages.shape != group_ids.shape or advantages.ndim != 1:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} and group_ids {tuple(group_ids.shape)} must "
            "both be [n]"
        )
    advantages = advantages.detach().float().cpu()
    group_ids = group_ids.cpu()
    mask = torch.zeros(advantages.shape[0], dtype=torch.bool)
    for group in torch.unique(group_ids):
        members = torch.nonzero((group_ids == group) & torch.isfinite(advantages)).squeeze(1)
        if members.numel() <= k:
            mask[members] = True
            continue
        # stable sort: equal advantages keep index order
        order = members[torch.sort(advantages[members], stable=True).indices]
        mask[order[: k // 2]] = True  # lowest
        mask[order[-(k // 2) :]] = True  # highest
    return mask


def pick_best(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring candidate of each group, in group order ``[num_groups]``.

    NaN scores lose to every number; a group whose scores are all NaN keeps its first candidate.
    Ties go to the lower index (the earlier seed).
    """
    if scores.shape != group_ids.shape or scores.ndim != 1:
        raise ValueError("scores and group_ids must both be [n]")
    scores = scores.detach().float().cpu()
    group_ids = group_ids.cpu()
    best = []
    for group in torch.unique(group_ids):  # sorted
        members = torch.nonzero(group_ids == group).squeeze(1)
        values = torch.nan_to_num(scores[members], nan=-float("inf"))
        # argmax of the first maximum: equal scores go to the earlier candidate
        top = values.max()
        best.append(int(members[torch.nonzero(values == top)[0, 0]]))
    return torch.tensor(best, dtype=torch.long)


def score_candidates(
    rewards: list[tuple[RewardSpec, Reward]], media: torch.Tensor, prompts: list[Prompt]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score candidates ``[n, ...]`` with every reward: the weighted sum of the chosen components
    ``[n]`` (the raw scores, not normalised: weights set the exchange rate between rewards) and
    each reward's value by label. A reward that fails or returns the wrong shape raises
    RewardError; a NaN stays NaN, so that candidate cannot win."""
    n = media.shape[0]
    total = torch.zeros(n)
    by_label: dict[str, torch.Tensor] = {}
    results: dict[int, dict[str, torch.Tensor]] = {}
    for spec, reward in rewards:
        if id(reward) not in results:
            try:
                with torch.no_grad():
                    results[id(reward)] = reward.score(media, prompts)
            except Exception as exc:
                raise RewardError(
                    f"reward '{spec.name}' raised {type(exc).__name__}: {exc}"
                ) from exc
        component = spec.component or reward.components[0]
        value = results[id(reward)].get(component)
        if value is None or value.shape != (n,):
            raise RewardError(f"reward '{spec.name}' must return component '{component}' of [{n}]")
        value = value.detach().float().cpu()
        by_label[spec.label] = value
        total = total + spec.weight * value
    return total, by_label


@torch.no_grad()
def sample_best_of_n(
    policy: Policy,
    sampler: Sampler,
    prompts: list[Prompt],
    n: int,
    rewards: list[tuple[RewardSpec, Reward]],
    first_seed: int = 0,
    batch_size: int = 4,
) -> tuple[torch.Tensor, list[int], list[dict[str, Any]]]:
    """Draw ``n`` candidates per prompt, keep the best by the weighted reward.

    Candidate ``j`` of prompt ``i`` starts from seed ``first_seed + i * n + j``: with a
    deterministic sampler ``dance sample --prompt TEXT --seed SEED`` regenerates it exactly.
    Prompts are handled one at a time, so memory holds ``n`` candidates, not all of them.
    Returns the chosen media ``[P, ...]``, their seeds, and one record per prompt listing every
    candidate's seed and scores.
    """
    chosen, chosen_seeds, records = [], [], []
    for i, prompt in enumerate(prompts):
        seeds = list(range(first_seed + i * n, first_seed + (i + 1) * n))
        media = generate(policy, sampler, [prompt] * n, seeds, batch_size=batch_size)  # [n, ...]
        totals, labels = [], []
        for start in range(0, n, batch_size):  # score in batches too
            part = media[start : start + batch_size].to(policy.runtime.device)
            total, by_label = score_candidates(rewards, part, [prompt] * part.shape[0])
            totals.append(total)
            labels.append(by_label)
        total = torch.cat(totals)  # [n]
        by_label = {k: torch.cat([d[k] for d in labels]) for k in labels[0]}
        best = int(pick_best(total, torch.zeros(n, dtype=torch.long))[0])
        chosen.append(media[best])
        chosen_seeds.append(seeds[best])
        records.append(
            {
                "prompt": prompt.text,
                "chosen_seed": seeds[best],
                "chosen_score": _number(total[best]),
                "candidates": [
                    {
                        "seed": s,
                        "score": _number(total[j]),
                        "rewards": {k: _number(v[j]) for k, v in by_label.items()},
                    }
                    for j, s in enumerate(seeds)
                ],
            }
        )
    return torch.stack(chosen), chosen_seeds, records


def _number(value: torch.Tensor) -> float | None:
    """A JSON-safe float: NaN becomes null."""
    x = float(value)
    return None if math.isnan(x) else x


def expected_best_of_n(scores: torch.Tensor, values: torch.Tensor, n: int) -> float:
    """Mean over rows of E[value of the highest-scoring of ``n`` candidates drawn at random,
    without replacement, from the row's ``M``]: ``scores [P, M]`` choose, ``values [P, M]`` are
    reported (the score itself, or a success flag).

    Exact, from order statistics: the candidate ranked ``i``-th lowest (0-based) is the best of
    ``C(i, n - 1)`` of the ``C(M, n)`` subsets. Ties in the score go to the earlier candidate, as
    :func:`pick_best` decides them. Uses every candidate for every ``n``, so it varies less than
    taking the first ``n`` seeds.
    """
    rows, m = scores.shape
    if not 1 <= n <= m:
        raise ValueError(f"n must be between 1 and {m}, got {n}")
    total = 0.0
    for row in range(rows):
        s = torch.nan_to_num(scores[row].float(), nan=-float("inf")).tolist()
        # ascending by score; among equal scores the later candidate ranks lower (loses ties)
        order = sorted(range(m), key=lambda j: (s[j], -j))
        for rank, j in enumerate(order):
            total += float(values[row, j]) * math.comb(rank, n - 1) / math.comb(m, n)
    return total / rows
