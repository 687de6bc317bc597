"""How one iteration's samples and trained (sample, step) pairs are laid out over ranks.

World-size invariance is a design rule (docs/quickstart.md, "Several processes"): with the same
recipe and seed, 1, 2 or N processes draw the same samples, train the same (sample, step) pairs in
the same optimizer steps and end with the same weights, up to the order of float reductions. So:

- every random draw is keyed by (seed, iteration, global sample index), never by rank: the
  initial noise per sample (or group), the sampler's noise as one draw for the whole batch per
  step (:class:`dance.sampling.generate.BatchNoise`);
- the pairs an iteration trains on, their order and their split into optimizer steps are drawn
  over the global batch, from a generator keyed by (seed, iteration) alone
  (:func:`draw_pairs`, :func:`optimizer_windows`); each rank then trains the pairs of the
  samples it holds (:func:`rank_micro_batches`);
- every rank holds the same number of rows and runs the same number of forward and backward
  passes (sharded training gathers parameters in every pass): ranks fill the gaps with
  zero-weight padding rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import dance.distributed as dist


@dataclass(frozen=True)
class SampleLayout:
    """The ``total`` samples of an iteration over ``world_size`` ranks.

    Rank ``r`` holds the ``per_rank = ceil(total / world_size)`` consecutive global indices
    from ``r * per_rank``. When ``total`` does not divide evenly, the last ranks' highest
    indices are at or past ``total``: padding rows, rolled out like the others (so every rank
    runs the same forwards) but never scored or trained.
    """

    total: int
    world_size: int = 1
    rank: int = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.total / self.world_size)

    @property
    def first(self) -> int:
        return self.rank * self.per_rank

    @property
    def global_index(self) -> torch.Tensor:
        """Global index of every local row ``[n]``; padding rows are ``>= total``."""
        return torch.arange(self.first, self.first + self.per_rank)

    @property
    def real_count(self) -> int:
        """Local rows that are samples of the iteration (not padding): they come first."""
        return max(0, min(self.per_rank, self.total - self.first))

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's ``local [n, ...]`` in global order ``[total, ...]``, on every rank."""
        return dist.all_gather_cat(local)[: self.total]

    def pad(self, real: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
        """Values of the real rows ``[real_count, ...]`` padded with ``fill`` to ``[n, ...]``."""
        missing = self.per_rank - real.shape[0]
        filler = real.new_full((missing, *real.shape[1:]), fill)
        return torch.cat([real, filler])


def draw_pairs(
    train_steps: torch.Tensor, per_sample: int, trained: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The (global sample, step) pairs an iteration trains on, shuffled: ``[M, 2]``.

    Each of the ``S`` samples draws ``per_sample`` distinct steps among ``train_steps [T_max]``
    (drawn for every sample, in index order, so one sample's steps do not depend on which other
    samples train); the pairs of the samples with ``trained [S]`` are kept and shuffled. The
    generator must be keyed by (seed, iteration) only.
    """
    count = train_steps.numel()
    steps = torch.stack(
        [train_steps[torch.randperm(count, generator=generator)[:per_sample]] for _ in trained]
    )  # [S, T]
    samples = torch.arange(trained.numel()).unsqueeze(1).expand_as(steps)  # [S, T]
    keep = trained.cpu().unsqueeze(1).expand_as(steps)  # [S, T]
    pairs = torch.stack([samples[keep], steps[keep]], dim=1)  # [M, 2]
    return pairs[torch.randperm(pairs.shape[0], generator=generator)]


def optimizer_windows(num_pairs: int, pairs_per_step: int) -> list[slice]:
    """Consecutive slices of the shuffled pairs, one per optimizer step: ``pairs_per_step``
    pairs each (the last may hold fewer); 0 = every pair in one step."""
    width = pairs_per_step or max(num_pairs, 1)
    return [slice(j, min(j + width, num_pairs)) for j in range(0, num_pairs, width)]


@dataclass
class MicroBatch:
    """One forward and backward pass of a rank: local ``rows [m]`` at ``steps [m]``, with
    ``weight [m]`` False on padding pairs (trained with weight 0)."""

    rows: torch.Tensor
    steps: torch.Tensor
    weight: torch.Tensor


def rank_micro_batches(
    pairs: torch.Tensor, layout: SampleLayout, micro_batch_size: int, filler_step: int
) -> list[MicroBatch]:
    """This rank's micro-batches for the global pairs ``[W, 2]`` of one optimizer step.

    A rank trains the pairs of the samples it holds, in their global order, ``micro_batch_size``
    at a time. Every rank returns the same number of micro-batches, that of the rank with the
    most pairs; a rank with fewer adds micro-batches of one zero-weight pair (its first row at
    ``filler_step``).
    """
    owner = pairs[:, 0] // layout.per_rank  # [W]
    most = int(torch.bincount(owner, minlength=layout.world_size).max()) if len(pairs) else 0
    count = max(1, math.ceil(most / micro_batch_size))
    mine = pairs[owner == layout.rank]  # [w, 2]
    rows, steps = mine[:, 0] - layout.first, mine[:, 1]
    batches = []
    for k in range(count):
        part = slice(k * micro_batch_size, (k + 1) * micro_batch_size)
        if rows[part].numel():
            weight = torch.ones(rows[part].numel(), dtype=torch.bool)
            batches.append(MicroBatch(rows[part], steps[part], weight))
        else:
            batches.append(
                MicroBatch(
                    torch.zeros(1, dtype=torch.long),
                    torch.full((1,), filler_step, dtype=torch.long),
                    torch.zeros(1, dtype=torch.bool),
                )
            )
    return batches
