"""Held-out evaluation every N iterations (evaluation.every): files, curve, plot, resume."""

import json

import pytest
import torch

import dance
from dance.cli.recipe import resolve
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.training.trainer import Trainer


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def make_trainer(registry, out, iterations, every, checkpoint_every=1):
    raw = {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 4},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "evaluation": {
            "prompts": "pkg:dance/data/prompts.txt",
            "seeds": 1,
            "num_steps": 3,
            "every": every,
        },
        "trainer": {
            "iterations": iterations,
            "prompts_per_iteration": 2,
            "group_size": 4,
            "learning_rate": 1e-2,
            "sample_every": 0,
            "checkpoint_every": checkpoint_every,
        },
    }
    return Trainer(resolve(raw, registry), out, dance.Runtime(), registry)


def spy_stages(trainer):
    """Record the stage of every evaluation the trainer runs."""
    stages, real = [], trainer.evaluate

    def evaluate(stage):
        stages.append(stage)
        return real(stage)

    trainer.evaluate = evaluate
    return stages


def test_periodic_evaluations_make_a_curve_and_leave_training_alone(registry, tmp_path):
    plain = make_trainer(registry, tmp_path / "plain", iterations=5, every=0)
    plain.run()
    trainer = make_trainer(registry, tmp_path / "curve", iterations=5, every=2)
    stages = spy_stages(trainer)
    summary = trainer.run()
    # Not after iteration 5: "after" scores those weights.
    assert stages == ["before", "iter-000002", "iter-000004", "after"]
    folder = tmp_path / "curve" / "eval"
    assert json.loads((folder / "iter-000004.json").read_text())["iteration"] == 4
    curve = summary["eval_curve"]
    assert [p["iteration"] for p in curve] == [0, 2, 4, 5]
    assert [p["stage"] for p in curve] == ["before", "iter-000002", "iter-000004", "after"]
    for point in curve:
        stage = json.loads((folder / f"{point['stage']}.json").read_text())
        assert point["reward_mean"] == stage["reward_mean"]
    assert curve[0]["reward_mean"] != curve[-1]["reward_mean"]  # the weights did change
    assert (tmp_path / "curve" / "eval_curve.png").is_file()
    assert summary["files"]["eval_curve"] == "eval_curve.png"
    # Evaluating draws from no shared random state: the trained weights are the same.
    for a, b in zip(plain.params, trainer.params, strict=True):
        assert torch.equal(a, b)
    # And the evaluated weights are those of the run: the same figures after training.
    assert (
        summary["eval_after"]["reward_mean"]
        == json.loads((tmp_path / "plain" / "eval" / "after.json").read_text())["reward_mean"]
    )
    plain_summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert "eval_curve" not in plain_summary and "eval_curve" not in plain_summary["files"]


def test_resume_neither_repeats_nor_loses_an_evaluation(registry, tmp_path):
    straight = make_trainer(registry, tmp_path / "a", iterations=6, every=2)
    straight_summary = straight.run()
    first = make_trainer(registry, tmp_path / "b", iterations=4, every=2)
    assert spy_stages(first) == [] and first.run()["iterations"] == 4
    resumed = make_trainer(registry, tmp_path / "b", iterations=6, every=2)
    stages = spy_stages(resumed)
    summary = resumed.run(resume=True)
    # The first run's "after" (iteration 4) was also written as iter-000004: 2 and 4 are not
    # redone, and 6 is the new "after".
    assert stages == ["after"]
    assert (tmp_path / "b" / "eval" / "iter-000004.json").is_file()
    assert summary["eval_curve"] == straight_summary["eval_curve"]
    assert [p["iteration"] for p in summary["eval_curve"]] == [0, 2, 4, 6]
    # 6 is written as "after" and iter-000006 (for a run that would continue); one point.
    assert (tmp_path / "b" / "eval" / "iter-000006.json").is_file()
    assert summary["eval_curve"][-1]["stage"] == "after"


def test_resume_makes_up_an_evaluation_due_at_the_resumed_iteration(registry, tmp_path):
    make_trainer(registry, tmp_path, iterations=2, every=0).run()
    resumed = make_trainer(registry, tmp_path, iterations=3, every=2)
    stages = spy_stages(resumed)
    summary = resumed.run(resume=True)
    assert stages == ["iter-000002", "after"]
    assert [p["iteration"] for p in summary["eval_curve"]] == [0, 2, 3]
