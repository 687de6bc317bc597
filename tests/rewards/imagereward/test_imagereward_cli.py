"""`dance run --reward imagereward` end to end on the tiny FLUX checkpoint and tiny ImageReward."""

from __future__ import annotations

import json
import math

import pytest

from dance.cli.app import main
from dance.registry import reset_registry

SMALL = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4, "lora_alpha": 8.0}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _flux_args(tiny_flux, run_dir) -> list[str]:
    return (
        ["run", "--policy", "flux", "--model", str(tiny_flux), "--reward", "imagereward"]
        + ["--output-dir", str(run_dir), "--no-progress"]
        + [f"policy.{k}={v}" for k, v in SMALL.items()]
        + ["trainer.iterations=2", "trainer.group_size=2", "trainer.prompts_per_iteration=2"]
        + ["sampler.num_steps=2"]
    )


def test_dance_run_trains_against_imagereward(tiny_flux, tiny_imagereward, tmp_path, capsys):
    run_dir = tmp_path / "run"
    options = [
        f"rewards.imagereward.model={json.dumps(str(tiny_imagereward))}",
        f"rewards.imagereward.tokenizer={json.dumps(str(tiny_imagereward / 'tokenizer'))}",
        "rewards.imagereward.batch_size=3",
    ]
    code, _, err = _run(_flux_args(tiny_flux, run_dir) + options, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["reward/imagereward/mean"])
    assert (run_dir / "checkpoints" / "iter-000002").is_dir()
    config = (run_dir / "config.toml").read_text()
    assert 'name = "imagereward"' in config and str(tiny_imagereward) in config


def test_dance_run_without_weights_says_what_to_set(tiny_flux, tmp_path, capsys):
    missing = json.dumps(str(tmp_path / "missing" / "ImageReward.pt"))
    code, _, err = _run(
        _flux_args(tiny_flux, tmp_path / "run") + [f"rewards.imagereward.model={missing}"], capsys
    )
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "rewards.imagereward.model=" in line, err
