"""`dance run` on the tiny FLUX checkpoint with the CLIP-family rewards, through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dance.cli.app import main
from dance.registry import reset_registry
from dance_clip_rewards import tiny

SMALL = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4, "lora_alpha": 8.0}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(args)
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err


def _base_args(tiny_flux: Path, run_dir: Path) -> list[str]:
    return (
        ["run", "--policy", "flux", "--model", str(tiny_flux), "--output-dir", str(run_dir)]
        + ["--no-progress", *[f"policy.{k}={v}" for k, v in SMALL.items()]]
        + ["trainer.iterations=1", "trainer.group_size=2", "trainer.prompts_per_iteration=2"]
        + ["sampler.num_steps=2"]
    )


def _metrics(run_dir: Path) -> dict[str, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_dance_run_with_hps(tiny_flux: Path, clip_files, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "hps"
    _run(
        _base_args(tiny_flux, run_dir)
        + ["--reward", "hps", f"rewards.hps.checkpoint={clip_files.hps}"]
        + [f"rewards.hps.model={tiny.TINY_H14}"],
        capsys,
    )
    metrics = _metrics(run_dir)
    assert -1.0 <= metrics["reward/hps/mean"] <= 1.0
    assert metrics["optimizer_steps"] == 1


def test_dance_run_with_hps_and_clip_score(
    tiny_flux: Path, clip_files, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "hps-clip"
    _run(
        _base_args(tiny_flux, run_dir)
        + ["--reward", "hps:0.7", "--reward", "clip-score:1.4"]
        + [f"rewards.hps.checkpoint={clip_files.hps}", f"rewards.hps.model={tiny.TINY_H14}"]
        + [f"rewards.clip-score.checkpoint={clip_files.hps}"]
        + [f"rewards.clip-score.model={tiny.TINY_H14}", "rewards.clip-score.pretrained="],
        capsys,
    )
    metrics = _metrics(run_dir)
    assert -1.0 <= metrics["reward/hps/mean"] <= 1.0
    assert -1.0 <= metrics["reward/clip-score/mean"] <= 1.0
    config = (run_dir / "config.toml").read_text()
    assert "weight = 0.7" in config and "weight = 1.4" in config


def test_dance_run_with_pickscore_and_aesthetic(
    tiny_flux: Path, clip_files, tmp_path: Path, capsys
) -> None:
    """The two rewards beyond the paper, combined in one run with the flow_grpo combine mode."""
    run_dir = tmp_path / "pick-aesthetic"
    options = [
        f"rewards.{name}.{key}={value}"
        for name in ("pickscore", "laion-aesthetic")
        for key, value in clip_files.options(name).items()
    ]
    _run(
        _base_args(tiny_flux, run_dir)
        + ["--reward", "pickscore", "--reward", "laion-aesthetic:0.5", *options]
        + ["advantage.combine=rewards"],
        capsys,
    )
    metrics = _metrics(run_dir)
    for label in ("pickscore", "laion-aesthetic"):
        assert math.isfinite(metrics[f"reward/{label}/mean"])
        assert math.isfinite(metrics[f"reward/{label}/std"])
    assert metrics["optimizer_steps"] == 1
