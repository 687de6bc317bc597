"""`dance run` trains the bundled demo with MixGRPO's sliding SDE window set on the command line."""

from __future__ import annotations

import json

import pytest

from dance.cli.app import main
from dance.registry import reset_registry


def test_demo_slides_the_window_through_the_cli(tmp_path, capsys):
    reset_registry()
    out_dir = tmp_path / "demo"
    # 12 steps; a window of 4 from step 8, moved by one step every iteration, cut before the
    # last step (11): steps 8-10, then 9-10, then 10. The demo trains every window step.
    args = [
        "run",
        "--no-progress",
        "--output-dir",
        str(out_dir),
        "trainer.iterations=3",
        "evaluation.prompts=",
        "sampler.sde_window_schedule=progressive",
        "sampler.sde_window_start=8",
        "sampler.sde_window_shift_interval=1",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    samples = 4 * 8  # prompts_per_iteration x group_size of the demo recipe
    assert [m["trained_pairs"] for m in metrics] == [3 * samples, 2 * samples, 1 * samples]
    config = (out_dir / "config.toml").read_text()
    assert 'sde_window_schedule = "progressive"' in config
    assert "sde_window_shift_interval = 1" in config
