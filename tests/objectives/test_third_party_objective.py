"""A third-party objective, written here as a plugin author would, runs through the hook, the
shared contract, the recipe and the command line: advantage-weighted flow matching on the final
samples (a small cousin of DiffusionNFT, kept deliberately simple)."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass

import pytest
import torch

import dance
import dance.registry
from dance.config import option
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli
from dance.testing.objective_contract import ObjectiveContract


@dataclass
class WeightedFlowMatchingConfig:
    temperature: float = option(1.0, "advantages are weighted by exp(A / temperature)", gt=0)
    timesteps: int = option(3, "forward-process timesteps trained per sample", ge=1)


class WeightedFlowMatching(dance.Objective):
    """Loss exp(A / tau) * |v_theta(x_t, t) - (noise - x0)|^2 on the rollout's final samples."""

    name = "weighted-flow-matching"
    config_class = WeightedFlowMatchingConfig
    keeps = "samples"
    sampler_requirement = "any sampler"

    def train_units(self, rollout):
        return torch.arange(self.config.timesteps), self.config.timesteps

    def loss(self, rollout, batch):
        x0 = rollout.samples[batch.rows]  # [m, *L]
        # Noise and t keyed by (seed, iteration, sample, unit): any number of processes agrees.
        draws = [
            torch.Generator().manual_seed(hash((self.context.seed, batch.iteration, s, u)) % 2**62)
            for s, u in zip(batch.samples.tolist(), batch.units.tolist(), strict=True)
        ]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in draws])
        t = (batch.units.float() + 0.5) / self.config.timesteps  # [m] in (0, 1)
        tb = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - tb) * x0 + tb * noise
        v = self.context.policy.predict(x_t, t, rollout.cond.select(batch.rows))
        error = ((v - (noise - x0)) ** 2).flatten(1).mean(dim=1)  # [m]
        return torch.exp(batch.advantages / self.config.temperature).clamp(max=10.0) * error


plugin = types.SimpleNamespace(
    register_objectives=dance.hookimpl(lambda register: register(WeightedFlowMatching))
)


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
