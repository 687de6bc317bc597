"""Image-by-image comparison of two evaluations, with a sign test."""

import math

import pytest

from dance.reporting.paired import paired_change, sign_test_p


def test_sign_test_matches_the_binomial_tail_worked_by_hand():
    # 9 better, 1 worse: P(X <= 1) for X ~ Binomial(10, 1/2) is (1 + 10) / 1024, doubled.
    assert sign_test_p(9, 1) == pytest.approx(22 / 1024)
    assert sign_test_p(1, 9) == sign_test_p(9, 1)
    # An even split is what "no change" predicts most often: p = 1.
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(0, 0) == 1.0
    # 20 of 20 better: 2 / 2^20.
    assert sign_test_p(20, 0) == pytest.approx(2 / 2**20)


def test_sign_test_against_the_normal_approximation_for_many_pairs():
    # 70 of 100: z = (70 - 50) / 5 = 4, two-sided normal tail 6.3e-5; the exact test is close.
    exact = sign_test_p(70, 30)
    normal = math.erfc(4 / math.sqrt(2))
    assert exact == pytest.approx(normal, rel=0.5)


def test_paired_change_counts_better_worse_and_ties():
    out = paired_change([0.5, 0.5, 1.0, 0.0], [0.75, 0.5, 0.0, 1.0])
    assert out["images_better"] == 2 and out["images_worse"] == 1
    assert out["images_unchanged"] == 1
    assert out["mean_change"] == pytest.approx((0.25 + 0 - 1 + 1) / 4)
    assert out["sign_test_p"] == pytest.approx(sign_test_p(2, 1))


def test_paired_change_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="3 scores before and 2 after"):
        paired_change([0.0, 1.0, 1.0], [1.0, 1.0])


def test_pairs_with_an_unscored_image_are_left_out():
    out = paired_change([0.0, float("nan"), 0.5], [1.0, 1.0, float("nan")])
    assert out["images_unscored"] == 2
    assert out["images_better"] == 1 and out["images_worse"] == 0
    assert out["mean_change"] == 1.0
