"""Several processes never hang and never fail silently: real `dance run` commands on 2 gloo ranks.

A reward that raises on rank 1 only ends every rank with its message; a rank that starts late
does not hang the "before" evaluation; SIGTERM to one rank stops both after the same iteration,
with a checkpoint and exit code 143; a missing rank fails after trainer.distributed_timeout; a
loss that turns NaN stops the run without checkpointing it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import dance
import dance.cli.app
import dance.distributed as dist
import dance.registry
from dance.cli.recipe import resolve
from dance.config import option
from dance.errors import RunError
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.multiprocess import free_port, launch, rank_env, start
from dance.training.trainer import Trainer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and gloo")


@dataclass
class _FaultCfg:
    fail_on_rank: int = option(-1, "rank on which scoring raises; -1 = none")


class _Fault(dance.Reward):
    """Brightness, except that scoring raises on one rank."""

    name = "fault"
    config_class = _FaultCfg
    components = ("value",)

    def score(self, media, prompts):
        if dist.rank() == self.config.fail_on_rank:
            raise RuntimeError(f"reward server on rank {dist.rank()} is down")
        return {"value": media.flatten(1).mean(dim=1)}


_plugin = types.SimpleNamespace(register_rewards=dance.hookimpl(lambda register: register(_Fault)))


def cli_main(argv: list[str]) -> None:
    """`dance` with the toy policy and the fault reward registered; DANCE_TEST_LATE=SECONDS
    makes this rank build its trainer that much later than the others."""
    dance.registry._REGISTRY = load_registry(extra={"toy": toy_policy, "fault": _plugin})
    late = float(os.environ.get("DANCE_TEST_LATE", "0"))
    init = dance.cli.app._init_distributed

    def init_then_wait(timeout_s: float) -> None:
        init(timeout_s)
        time.sleep(late)

    dance.cli.app._init_distributed = init_then_wait
    dance.cli.app.main(argv)


def dance_run(output: Path, *overrides: str) -> list[str]:
    """argv of one rank: `dance run` on the toy policy through :func:`cli_main`."""
    args = [
        "run",
        "--policy",
        "toy-flow",
        "--reward",
        "fault",
        "--no-progress",
        "--output-dir",
        str(output),
        "trainer.prompts_per_iteration=2",
        "trainer.group_size=3",
        "sampler.num_steps=4",
        *overrides,
    ]
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import {Path(__file__).stem} as t; t.cli_main({args!r})"
    )
    return [sys.executable, "-c", code]


def test_a_reward_failing_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    start_time = time.monotonic()
    outcomes = launch(
        dance_run(tmp_path / "run", "trainer.iterations=3", "rewards.0.fail_on_rank=1"),
        2,
        timeout=300,
    )
    for o in outcomes:
        assert o.returncode == 1, (o.rank, o.stderr[-2000:])
        assert "reward server on rank 1 is down" in o.stderr, (o.rank, o.stderr[-2000:])
        assert "Traceback" not in o.stderr
    assert "rank 1 failed during reward scoring" in outcomes[0].stderr
    # Quickly: the other rank does not wait for trainer.distributed_timeout (1800 s).
    assert time.monotonic() - start_time < 240
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


def test_a_rank_that_starts_late_does_not_hang(tmp_path):
    prompts = tmp_path / "eval.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    outcomes = launch(
        dance_run(
            tmp_path / "run",
            "trainer.iterations=1",
            f"evaluation.prompts={prompts}",
            "evaluation.seeds=1",
            "evaluation.num_steps=2",
        ),
        2,
        rank_env_extra={1: {"DANCE_TEST_LATE": "4"}},
        timeout=300,
    )
    assert [o.returncode for o in outcomes] == [0, 0], outcomes[1].stderr[-2000:]
    before = json.loads((tmp_path / "run" / "eval" / "before.json").read_text())
    assert before["images"] == 3 and len(before["per_image"]["reward"]) == 3
    assert (tmp_path / "run" / "eval" / "after.json").is_file()


def test_sigterm_to_one_rank_stops_both_after_the_iteration_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    job = start(dance_run(run, "trainer.iterations=100000", "trainer.checkpoint_every=0"), 2)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()):  # the loop is running
        assert time.monotonic() < deadline, "no iteration finished"
        assert all(p.poll() is None for p in job.procs), "a rank ended early"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM, ranks=[0])  # as if rank 1 never got it
    outcomes = job.wait(timeout=240)
    for o in outcomes:
        assert o.returncode == 128 + signal.SIGTERM, (o.rank, o.stderr[-2000:])
    done = len(metrics.read_text().splitlines())
    assert (run / "checkpoints" / "latest").read_text() == f"iter-{done:06d}"
    assert f"stopped by SIGTERM after {done} iterations" in outcomes[0].stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == done


def test_a_missing_rank_fails_after_the_distributed_timeout(tmp_path):
    argv = dance_run(tmp_path / "run", "trainer.distributed_timeout=3")
    env = rank_env(0, 2, free_port())  # rank 1 never starts
    begin = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "could not join the process group" in proc.stderr
    assert "distributed_timeout = 3.0 s" in proc.stderr
    assert time.monotonic() - begin < 200


def test_a_non_finite_loss_stops_without_checkpointing_it(tmp_path):
    registry = load_registry(extra={"toy": toy_policy, "fault": _plugin})
    raw = {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 4},
        "rewards": [{"name": "fault"}],
        "trainer": {"iterations": 3, "prompts_per_iteration": 2, "group_size": 3},
    }
    raw["trainer"]["checkpoint_every"] = 1
    trainer = Trainer(resolve(raw, registry), tmp_path, dance.Runtime(), registry)
    predict, calls = trainer.policy.predict, []

    def diverging(latents, timesteps, cond):
        out = predict(latents, timesteps, cond)
        calls.append(trainer.iteration_done)
        return out * float("nan") if trainer.iteration_done >= 1 and out.requires_grad else out

    trainer.policy.predict = diverging
    with pytest.raises(RunError, match="non-finite.*iteration 1.*not saved.*iter-000001"):
        trainer.run()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-000001"
    assert not (tmp_path / "checkpoints" / "iter-000002").exists()
    assert all(torch.isfinite(p).all() for p in trainer.params)
