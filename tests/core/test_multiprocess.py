"""The multi-process launcher of dance.testing: N gloo ranks from pytest, results and failures."""

import sys

import pytest
import torch

import dance.distributed as dist
from dance.errors import RewardError
from dance.testing.multiprocess import RanksFailed, launch, run_function


def collectives(offset: int) -> dict:
    """Every helper of dance.distributed once, on each rank."""
    r = dist.rank()
    out = {
        "gather": dist.all_gather_cat(torch.tensor([r + offset])).tolist(),
        "sum": dist.all_reduce(torch.tensor([r + 1.0])).item(),
        "min": dist.all_reduce(torch.tensor([r + 1.0]), "min").item(),
        "max": dist.all_reduce(torch.tensor([r + 1.0]), "max").item(),
        "any": (dist.any_rank(r == 1), dist.any_rank(False)),
        "broadcast": dist.broadcast_object({"from": r}),
        "to_main": dist.gather_to_main(torch.full((2, 3), float(r))),
    }
    for name, error in (("reward", RewardError("reward 'x' is down")), ("bug", KeyError("k"))):
        try:
            with dist.fail_together(name):
                if r == 1:
                    raise error
            out[name] = None
        except Exception as exc:
            out[name] = (type(exc).__name__, str(exc))
    return out


def fail_on_rank_one() -> None:
    if dist.rank() == 1:
        raise ValueError("rank one is broken")


def test_collectives_and_failures_shared_by_every_rank():
    rank0, rank1 = run_function(collectives, 2, 10)
    for out in (rank0, rank1):
        assert out["gather"] == [10, 11]
        assert (out["sum"], out["min"], out["max"]) == (3.0, 1.0, 2.0)
        assert out["any"] == (True, False) and out["broadcast"] == {"from": 0}
    assert rank0["to_main"].tolist() == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
    assert rank1["to_main"] is None
    # The failing rank raises its own error; the other raises its class and message.
    assert rank1["reward"] == ("RewardError", "reward 'x' is down")
    assert rank0["reward"] == ("RewardError", "rank 1 failed during reward: reward 'x' is down")
    assert rank1["bug"][0] == "KeyError"
    assert rank0["bug"] == ("RunError", "rank 1 failed during bug: KeyError: 'k'")


def test_a_failing_rank_is_reported_with_its_error():
    with pytest.raises(RanksFailed, match="rank one is broken") as info:
        run_function(fail_on_rank_one, 2)
    assert [o.returncode != 0 for o in info.value.outcomes] == [False, True]


def test_launch_gives_each_rank_its_environment_and_exit_code():
    code = (
        "import os, sys; print(os.environ['RANK'], os.environ['WORLD_SIZE']); "
        "sys.exit(int(os.environ['RANK']))"
    )
    outcomes = launch([sys.executable, "-c", code], 2, timeout=60)
    seen = [(o.returncode, o.stdout.split()) for o in outcomes]
    assert seen == [(0, ["0", "2"]), (1, ["1", "2"])]


def test_a_hang_is_killed_and_reported():
    with pytest.raises(TimeoutError, match="still running"):
        launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout=2)
