"""A third-party objective, written here as a plugin author would, runs through the hook, the
shared contract, the recipe and the command line: advantage-weighted flow matching on the final
samples (a small cousin of DiffusionNFT, kept deliberately simple)."""

from __future__ import annotations

import json

import pytest
import weighted_flow_matching as plugin  # the plugin module, as an entry point names it

import dance
import dance.registry
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli
from dance.testing.objective_contract import ObjectiveContract


class TestThirdPartyObjective(ObjectiveContract):
    objective = "weighted-flow-matching"
    sampler = {"name": "ode", "num_steps": 3}  # deterministic rollouts are fine here
    trainer = {"share_initial_noise": False}  # ... from distinct starts within a group
    plugins = {"wfm": plugin}


@pytest.fixture
def cli_registry(monkeypatch):
    registry = load_registry(extra={"toy": toy_policy, "wfm": plugin})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


def test_listed_by_dance_plugins_with_its_options(cli_registry, capsys):
    code, out, _ = run_cli(["plugins", "--options"], capsys)
    assert code == 0
    assert "objective weighted-flow-matching  (keeps samples; any sampler)" in out
    assert "temperature (float) = 1.0" in out
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    rows = {row["name"]: row for row in json.loads(out)}
    assert {"kind": "objective", "name": "weighted-flow-matching"}.items() <= (
        rows["wfm"]["registers"][0].items()
    )


def test_dance_run_with_objective_flag_trains_the_toy_policy(cli_registry, tmp_path, capsys):
    args = ["run", "--policy", "toy-flow", "--reward", "jpeg-incompressibility"]
    args += ["--objective", "weighted-flow-matching", "--sampler", "ode"]
    args += ["--output-dir", str(tmp_path), "--no-progress", "objective.temperature=0.5"]
    args += ["trainer.iterations=2", "trainer.group_size=2", "trainer.prompts_per_iteration=1"]
    args += ["trainer.share_initial_noise=false"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    config = (tmp_path / "config.toml").read_text()
    assert 'name = "weighted-flow-matching"' in config and "temperature = 0.5" in config
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    # The trainer logs the mean loss per trained pair for an objective that reports none:
    # exp(A / tau) * squared error > 0.
    assert all(line["loss"] > 0 and line["loss"] < float("inf") for line in lines)


def test_grpo_refuses_a_deterministic_sampler_in_one_line(cli_registry, tmp_path, capsys):
    args = ["run", "--policy", "toy-flow", "--reward", "jpeg-incompressibility"]
    args += ["--sampler", "ode", "--output-dir", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "sampler 'ode' is deterministic" in err and "objective.name=nft" in err
    assert "Traceback" not in err
