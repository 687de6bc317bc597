import math

import pytest
import torch

from dance.advantages import (
    BatchAdvantage,
    GroupAdvantage,
    NormalisedAdvantageConfig,
    normalise_within_groups,
)
from dance.interfaces import Runtime

S = 1 / math.sqrt(2)


def estimator(cls, **kwargs):
    return cls(NormalisedAdvantageConfig(**kwargs), Runtime())


def test_group_normalisation_hand_computed():
    adv = normalise_within_groups(
        torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0]), torch.tensor([0, 0, 0, 1, 1])
    )
    # group 0: mean 2, unbiased std 1; group 1: mean 15, unbiased std sqrt(50)
    expected = [-1.0, 0.0, 1.0, -5 / math.sqrt(50), 5 / math.sqrt(50)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_biased_std_option():
    adv = normalise_within_groups(torch.tensor([1.0, 3.0]), torch.tensor([7, 7]), unbiased=False)
    assert adv.tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)  # biased std of [1, 3] is 1


def test_singleton_and_constant_groups_give_zero_not_nan():
    values = torch.tensor([5.0, 4.0, 4.0, 4.0])
    groups = torch.tensor([0, 1, 1, 1])
    for unbiased in (True, False):
        adv = normalise_within_groups(values, groups, unbiased=unbiased)
        assert torch.isfinite(adv).all()
        assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_nan_rewards_are_excluded_from_statistics():
    adv = normalise_within_groups(torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([0, 0, 0]))
    assert adv[0].item() == pytest.approx(-S, abs=1e-6)  # mean 2, std sqrt(2) over [1, 3]
    assert math.isnan(adv[1].item())
    assert adv[2].item() == pytest.approx(S, abs=1e-6)


REWARDS = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 0.0, 0.0, 0.0])}
GROUPS = torch.tensor([0, 0, 1, 1])
WEIGHTS = {"a": 1.0, "b": 0.5}


def test_weighted_sum_of_advantages_dancegrpo():
    adv = estimator(GroupAdvantage, combine="advantages").compute(REWARDS, WEIGHTS, GROUPS)
    # a: [-S, S, -S, S]; b: group 0 [S, -S], group 1 constant -> 0
    assert adv.tolist() == pytest.approx([-S + 0.5 * S, S - 0.5 * S, -S, S], abs=1e-6)


def test_normalised_weighted_reward_sum_flow_grpo():
    adv = estimator(GroupAdvantage, combine="rewards").compute(REWARDS, WEIGHTS, GROUPS)
    # weighted sums: [6, 2, 3, 4] -> per group [S, -S], [-S, S]
    assert adv.tolist() == pytest.approx([S, -S, -S, S], abs=1e-6)


def test_clipping():
    values = torch.zeros(27)
    values[-1] = 100.0
    mean = 100 / 27
    std = math.sqrt(((100 - mean) ** 2 + 26 * mean**2) / 26)
    assert (100 - mean) / std > 5  # so the clip must act
    adv = estimator(GroupAdvantage, clip=5.0).compute({"r": values}, {"r": 1.0}, torch.zeros(27))
    assert adv[-1].item() == 5.0
    assert adv[0].item() == pytest.approx(-mean / std, abs=1e-6)


def test_batch_estimator_ignores_groups():
    adv = estimator(BatchAdvantage).compute(
        {"r": torch.tensor([1.0, 2.0, 3.0])}, {"r": 1.0}, torch.tensor([0, 1, 2])
    )
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)


def test_registered_through_entry_point():
    from dance.registry import load_registry

    registry = load_registry()
    assert registry.get("advantage", "group") is GroupAdvantage
    assert registry.get("advantage", "batch") is BatchAdvantage
    assert registry.components["advantage"]["group"].plugin == "advantages"
