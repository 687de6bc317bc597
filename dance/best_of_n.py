"""Best-of-N, the two ways DanceGRPO uses it.

Training: roll out ``N`` samples per prompt, let all of them set the group statistics, but update
only on the ``k/2`` samples of each group with the highest advantage and the ``k/2`` with the
lowest (DanceGRPO's HunyuanVideo setting: 24 rolled out, 8 trained). The extremes carry most of
the signal, and the update, the expensive phase, then costs ``k`` samples instead of ``N``.

Inference: draw ``N`` candidates per prompt and keep the one a reward likes best
(``dance sample --best-of N``).

The selection runs on the gathered advantages ``[P*G]``, which every rank holds identically, so
every rank computes the same choice without communicating even when a group spans ranks.
"""

from __future__ import annotations

import torch


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


def rows_to_train(
    selected: torch.Tensor, local_samples: int, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows to update on, padded so that every rank trains the same number of rows.

    ``selected [P*G]`` is the global mask of :func:`select_extremes`; rank ``r`` holds global
    samples ``r * local_samples ... (r + 1) * local_samples - 1``. Every rank must run the same
    number of micro-batches (each optimizer step all-reduces gradients), so ranks holding fewer
    selected samples repeat one of their rows with zero weight. Returns local row indices
    ``[m]`` and a mask ``[m]`` that is False on padding rows, where ``m`` is the largest count
    of selected samples on any rank (at least 1).
    """
    if selected.shape[0] != local_samples * world_size:
        raise ValueError(
            f"selected has {selected.shape[0]} samples, expected {local_samples} x {world_size}"
        )
    per_rank = selected.reshape(world_size, local_samples)  # [R, n]
    width = max(1, int(per_rank.sum(dim=1).max()))
    rows = torch.nonzero(per_rank[rank]).squeeze(1)  # [m_r]
    real = torch.ones(rows.shape[0], dtype=torch.bool)
    padding = width - rows.shape[0]
    if padding:
        filler = rows[:1] if rows.numel() else torch.zeros(1, dtype=torch.long)
        rows = torch.cat([rows, filler.repeat(padding)])
        real = torch.cat([real, torch.zeros(padding, dtype=torch.bool)])
    return rows, real


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
