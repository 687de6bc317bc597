"""The embedded default: `dance run` with no arguments on the bundled `bundled:shapes` model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dance
import dance_flux
from dance.cli.app import main
from dance.errors import ModelLayoutError
from dance.registry import get_registry, reset_registry
from dance_shapes.scenes import SceneSpec, render_tensor

BUNDLED = Path(dance_flux.__file__).parent / "bundled" / "shapes"


def test_bundled_model_is_small_and_in_the_flux_layout():
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size < 20e6
    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    reset_registry()
    policy = get_registry().create(
        "policy",
        "flux",
        {"model": "bundled:shapes", "height": 64, "width": 64, "max_sequence_length": 16},
        dance.Runtime(),
    )
    assert policy.path == BUNDLED
    with pytest.raises(ModelLayoutError, match="no bundled model 'nope'.*shapes"):
        get_registry().create("policy", "flux", {"model": "bundled:nope"}, dance.Runtime())


def test_binary_reward_over_the_shapes_score():
    reset_registry()
    binary = get_registry().create(
        "reward",
        "binary",
        {"reward": "shapes", "component": "score", "threshold": 0.99},
        dance.Runtime(),
    )
    spec = SceneSpec(2, "blue", "square", "on the left")
    wrong = SceneSpec(2, "red", "square", "on the left")
    media = torch.stack([render_tensor(spec, 64, 0), render_tensor(wrong, 64, 0)])
    out = binary.score(media, [dance.Prompt(spec.prompt)] * 2)
    assert out["binary"].tolist() == [1.0, 0.0]


def test_dance_run_without_arguments_runs_the_demo(tmp_path, capsys):
    reset_registry()
    out_dir = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-progress", "--output-dir", str(out_dir)] + SHORT)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    for stage in ("eval_before", "eval_after"):
        assert {"reward_mean", "success_rate"} <= set(summary[stage])
    for name in ("reward_curve.png", "eval_grid.png", "config.toml", "metrics.jsonl"):
        assert (out_dir / name).is_file(), name
    assert "reward_mean" in out and "success_rate" in out and "eval_grid.png" in out
    # The default objective (grpo) is the GRPO loop as it was before objectives became plugins:
    # the same metrics and held-out figures, bit for bit (the fixture says how it was made).
    reference = json.loads((FIXTURES / "demo_before_objectives" / "short.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(reference["metrics"])
    for row, expected in zip(rows, reference["metrics"], strict=True):
        assert {k: v for k, v in row.items() if k in expected} == expected
    for stage in ("eval_before", "eval_after"):  # (evaluations now also name their iteration)
        assert {k: v for k, v in summary[stage].items() if k != "iteration"} == reference[stage]


FIXTURES = Path(__file__).parents[2] / "fixtures"
SHORT = ["trainer.iterations=2", "evaluation.seeds=1"]

# The gain check runs the demo recipe exactly as `dance run` does: since the recipe was made cheaper
# (100 iterations, the rollout's log-probs, each group's shared start computed once), the whole run
# costs less CPU than the previous check's shortened run (100 of that recipe's 150 iterations).
# The held-out prompts and seeds are the recipe's (24 prompts x 4 seeds), the training seed is the
# default.
# "Clearly higher": a tenth of the reward scale, and ten points of success rate.
MIN_REWARD_GAIN = 0.10
MIN_SUCCESS_GAIN = 0.10


@pytest.mark.slow
def test_the_demo_run_clearly_improves_the_held_out_evaluation(tmp_path, capsys):
    """GRPO must improve the bundled model on held-out prompts, by margins far beyond the noise:
    the mean reward, the success rate, and image by image (at least twice as many images better as
    worse, and a sign test over the 96 images)."""
    reset_registry()
    out_dir = tmp_path / "gain"
    args = ["run", "--no-progress", "--output-dir", str(out_dir)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, capsys.readouterr().err
    summary = json.loads((out_dir / "summary.json").read_text())
    before, after = summary["eval_before"], summary["eval_after"]
    assert before["images"] == after["images"] == 96
    assert after["reward_mean"] >= before["reward_mean"] + MIN_REWARD_GAIN, (before, after)
    assert after["success_rate"] >= before["success_rate"] + MIN_SUCCESS_GAIN, (before, after)
    change = summary["eval_change"]["reward"]
    assert change["images_better"] >= 2 * change["images_worse"], change
    assert change["sign_test_p"] < 0.05, change
    # The default objective reproduces the demo of the GRPO loop before objectives were plugins
    # bit for bit: the held-out figures and the last iteration's metrics.
    reference = json.loads((FIXTURES / "demo_before_objectives" / "full.json").read_text())
    for key in ("eval_before", "eval_after", "eval_change"):
        figures = {k: v for k, v in summary[key].items() if k != "iteration"}
        assert figures == reference[key], key
    last = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    expected = reference["last_iteration"]
    assert {k: v for k, v in last.items() if k in expected} == expected
