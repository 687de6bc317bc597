"""Before/after comparison of an evaluation, image by image.

The evaluation scores the same prompts and seeds before and after training, so each image has a
pair of scores. Counting the images that got better and worse and testing the split with a sign
test says whether a change in the mean is more than the luck of a few images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def sign_test_p(better: int, worse: int) -> float:
    """Two-sided exact sign test: the probability, under "no change" (each untied pair equally
    likely to go either way), of a split at least as uneven as ``better``/``worse``.

    Ties are left out before calling, as the test prescribes (Dixon and Mood 1946).
    """
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_change(
    before: Sequence[float], after: Sequence[float], tolerance: float = 1e-6
) -> dict[str, float]:
    """How ``after`` differs from ``before``, pair by pair (same image index).

    Returns the mean change, the number of images better, worse and unchanged (within
    ``tolerance``) and the sign test's two-sided p-value. A pair with a NaN score (an image the
    reward could not score) is left out of all of them and counted in ``images_unscored``.
    """
    if len(before) != len(after):
        raise ValueError(f"got {len(before)} scores before and {len(after)} after")
    pairs = list(zip(before, after, strict=True))
    diffs = [a - b for b, a in pairs if not (math.isnan(a) or math.isnan(b))]
    better = sum(d > tolerance for d in diffs)
    worse = sum(d < -tolerance for d in diffs)
    return {
        "mean_change": sum(diffs) / len(diffs) if diffs else 0.0,
        "images_better": better,
        "images_worse": worse,
        "images_unchanged": len(diffs) - better - worse,
        "images_unscored": len(pairs) - len(diffs),
        "sign_test_p": sign_test_p(better, worse),
    }
