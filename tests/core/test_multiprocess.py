"""The multi-process launcher of dance.testing: N gloo ranks from pytest, results and failures."""

import sys

import pytest
import torch

import dance.distributed as dist
from dance.testing.multiprocess import RanksFailed, launch, run_function


def gather_ranks(offset: int) -> list[int]:
    return dist.all_gather_cat(torch.tensor([dist.rank() + offset])).tolist()


def fail_on_rank_one() -> None:
    if dist.rank() == 1:
        raise ValueError("rank one is broken")


def test_run_function_returns_every_ranks_result():
    assert run_function(gather_ranks, 2, 10) == [[10, 11], [10, 11]]


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
