"""Best-of-N: which samples are trained on, padding across ranks, and the pick at inference."""

import pytest
import torch

from dance.config import build
from dance.errors import ConfigError
from dance.sampling.best_of_n import expected_best_of_n, pick_best, select_extremes
from dance.training.trainer_config import TrainerConfig


def brute_force(advantages: list[float], group_size: int, k: int) -> set[int]:
    """The k/2 lowest and k/2 highest of each group, written out without torch."""
    chosen: set[int] = set()
    for start in range(0, len(advantages), group_size):
        idx = list(range(start, start + group_size))
        ranked = sorted(idx, key=lambda i: (advantages[i], i))
        chosen |= set(ranked[: k // 2]) | set(ranked[-(k // 2) :])
    return chosen


@pytest.mark.parametrize("k", [2, 4, 6])
def test_selects_the_extremes_of_every_group(k):
    gen = torch.Generator().manual_seed(0)
    advantages = torch.randn(3 * 8, generator=gen)
    groups = torch.arange(24) // 8
    mask = select_extremes(advantages, groups, k)
    assert set(torch.nonzero(mask).squeeze(1).tolist()) == brute_force(advantages.tolist(), 8, k)
    assert mask.reshape(3, 8).sum(dim=1).tolist() == [k, k, k]


def test_groups_need_not_be_contiguous():
    advantages = torch.tensor([5.0, -1.0, 0.0, 2.0, -3.0, 1.0, 0.5, 4.0])
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    mask = select_extremes(advantages, groups, 2)
    # group 0: 5, 0, -3, 0.5 -> 5 (index 0) and -3 (index 4); group 1: -1, 2, 1, 4 -> 1 and 7
    assert torch.nonzero(mask).squeeze(1).tolist() == [0, 1, 4, 7]


def test_ties_break_by_position():
    advantages = torch.zeros(6)
    mask = select_extremes(advantages, torch.zeros(6, dtype=torch.long), 2)
    # stable sort of equal values: lowest = index 0, highest = index 5
    assert torch.nonzero(mask).squeeze(1).tolist() == [0, 5]


def test_excluded_samples_are_never_selected():
    advantages = torch.tensor([float("nan"), 3.0, -2.0, 1.0, float("nan"), 0.0])
    mask = select_extremes(advantages, torch.zeros(6, dtype=torch.long), 2)
    assert torch.nonzero(mask).squeeze(1).tolist() == [1, 2]
    # a group with no more than k finite samples keeps them all
    small = select_extremes(advantages, torch.zeros(6, dtype=torch.long), 4)
    assert torch.nonzero(small).squeeze(1).tolist() == [1, 2, 3, 5]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_k_must_be_even_and_positive(k):
    with pytest.raises(ValueError, match="even"):
        select_extremes(torch.zeros(4), torch.zeros(4, dtype=torch.long), k)


def test_pick_best_per_prompt():
    scores = torch.tensor([0.1, 0.9, 0.5, float("nan"), 0.2, 0.2, float("nan"), float("nan")])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    # group 1: tie between 4 and 5 -> earlier; group 2: all NaN -> first
    assert pick_best(scores, groups).tolist() == [1, 4, 6]


@pytest.mark.parametrize("k", [1, 3, 12, 14])
def test_trainer_config_refuses_bad_k(k):
    with pytest.raises(ConfigError, match="train_per_group"):
        build(TrainerConfig, {"group_size": 12, "train_per_group": k}, "trainer.")


def test_trainer_config_accepts_the_paper_setting():
    cfg = build(TrainerConfig, {"group_size": 24, "train_per_group": 8}, "trainer.")
    assert cfg.train_per_group == 8


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_expected_best_of_n_equals_enumerating_every_subset(n):
    import itertools

    gen = torch.Generator().manual_seed(n)
    scores = torch.randint(0, 4, (3, 5), generator=gen).float()  # ties on purpose
    values = torch.rand(3, 5, generator=gen)
    expected = 0.0
    for row in range(3):
        subsets = list(itertools.combinations(range(5), n))
        for subset in subsets:
            best = subset[int(pick_best(scores[row, list(subset)], torch.zeros(n)).item())]
            expected += values[row, best].item() / len(subsets)
    expected /= 3
    assert expected_best_of_n(scores, values, n) == pytest.approx(expected, rel=1e-9)
    if n == 1:
        assert expected_best_of_n(scores, values, 1) == pytest.approx(values.mean().item())
