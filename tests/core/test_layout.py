"""How an iteration's samples and trained pairs are split over ranks (dance.training.layout)."""

import pytest
import torch

from dance.sampling.best_of_n import select_extremes
from dance.training.layout import (
    SampleLayout,
    draw_pairs,
    optimizer_windows,
    rank_micro_batches,
)


@pytest.mark.parametrize("total, world_size", [(8, 1), (8, 2), (3, 2), (24, 16), (5, 4)])
def test_every_sample_is_held_once_and_ranks_hold_equal_rows(total, world_size):
    layouts = [SampleLayout(total, world_size, r) for r in range(world_size)]
    index = torch.cat([lay.global_index for lay in layouts])
    assert index.tolist() == list(range(world_size * layouts[0].per_rank))
    real = [i for lay in layouts for i in lay.global_index[: lay.real_count].tolist()]
    assert real == list(range(total))  # real rows come first on each rank, in global order


def test_padding_fills_the_missing_rows():
    layout = SampleLayout(3, 2, 1)  # rank 1 holds sample 2 and one padding row
    padded = layout.pad(torch.tensor([7.0]))
    assert padded[0] == 7.0 and torch.isnan(padded[1])


def test_pairs_depend_on_seed_and_iteration_only():
    steps = torch.arange(5)
    trained = torch.ones(8, dtype=torch.bool)

    def draw(seed, it):
        return draw_pairs(
            steps, 3, trained, torch.Generator().manual_seed((seed * 1_000_003 + it) * 104_729)
        )

    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(0, 2)) and not torch.equal(draw(0, 1), draw(1, 1))
    pairs = draw(0, 1)
    assert torch.bincount(pairs[:, 0]).tolist() == [3] * 8  # 3 distinct steps per sample
    assert all(len(set(pairs[pairs[:, 0] == j, 1].tolist())) == 3 for j in range(8))


def test_a_sample_draws_the_same_steps_whether_or_not_others_train():
    steps = torch.arange(6)
    everyone = torch.ones(6, dtype=torch.bool)
    some = torch.tensor([True, False, True, False, False, True])
    a = draw_pairs(steps, 2, everyone, torch.Generator().manual_seed(3))
    b = draw_pairs(steps, 2, some, torch.Generator().manual_seed(3))
    for j in (0, 2, 5):
        assert sorted(a[a[:, 0] == j, 1].tolist()) == sorted(b[b[:, 0] == j, 1].tolist())
    assert set(b[:, 0].tolist()) == {0, 2, 5}


@pytest.mark.parametrize(
    "pairs, per_step, widths", [(24, 10, [10, 10, 4]), (7, 0, [7]), (0, 4, [])]
)
def test_optimizer_windows(pairs, per_step, widths):
    assert [w.stop - w.start for w in optimizer_windows(pairs, per_step)] == widths


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6, 5])
def test_groups_spanning_ranks_train_every_selected_pair_once(world_size):
    """Best-of-N over 2 prompts x 12 samples, split over ranks (not always evenly): every rank
    runs the same number of micro-batches, and together they train exactly the selected
    samples' pairs, each once, with weight 1; padding pairs have weight 0."""
    gen = torch.Generator().manual_seed(world_size)
    advantages = torch.randn(24, generator=gen)  # what every rank holds after the all-gather
    selected = select_extremes(advantages, torch.arange(24) // 12, 4)
    pairs = draw_pairs(torch.arange(5), 3, selected, gen)
    trained, counts = [], set()
    for rank in range(world_size):
        layout = SampleLayout(24, world_size, rank)
        batches = rank_micro_batches(pairs, layout, micro_batch_size=2, filler_step=0)
        counts.add(len(batches))
        for mb in batches:
            assert 1 <= mb.rows.numel() <= 2 and (mb.rows < layout.per_rank).all()
            trained += [
                (int(r) + layout.first, int(s))
                for r, s, w in zip(mb.rows, mb.steps, mb.weight, strict=True)
                if w
            ]
    assert len(counts) == 1
    assert sorted(trained) == sorted(map(tuple, pairs.tolist()))
