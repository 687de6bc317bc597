"""The bundled sd-hps-clip recipe resolves with DanceGRPO's SD settings and runs end to end.

The HPS and CLIP-score reward plugins are separate distributions; here two stand-ins registered
under their names (and DANCE_PLUGINS keeping the real ones out, should they be installed) let the
recipe resolve and run without their weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import pluggy
import pytest
import torch

from dance.interfaces import Prompt, Reward, RewardOutput

hookimpl = pluggy.HookimplMarker("dance")


@dataclasses.dataclass
class _NoOptions:
    pass


class StandInHPS(Reward):
    name = "hps"
    config_class = _NoOptions
    components = ("hps",)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        return {"hps": media.flatten(1).mean(1)}


class StandInCLIPScore(Reward):
    name = "clip-score"
    config_class = _NoOptions
    components = ("clip_score",)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        return {"clip_score": media[:, 0].flatten(1).std(1)}


class _StandIns:
    @staticmethod
    @hookimpl
    def register_rewards(register: Callable[[type], None]) -> None:
        register(StandInHPS)
        register(StandInCLIPScore)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    from dance.registry import load_registry

    monkeypatch.setenv("DANCE_PLUGINS", "sd,ddim,advantages,objectives,loggers")
    return load_registry(extra={"stand-in-rewards": _StandIns()})


def test_recipe_has_dancegrpos_sd_settings(registry, tiny_sd: Path) -> None:
    from dance.cli.recipe import read_recipe, resolve

    raw = read_recipe("sd-hps-clip")
    raw["policy"]["model"] = str(tiny_sd)
    recipe = resolve(raw, registry)
    assert recipe.policy == "sd" and recipe.sampler == "ddim"
    assert recipe.policy_options["guidance_scale"] == 5.0
    assert (recipe.policy_options["height"], recipe.policy_options["width"]) == (512, 512)
    assert recipe.sampler_options["num_steps"] == 50 and recipe.sampler_options["eta"] == 1.0
    assert recipe.sampler_options["beta_schedule"] == "scaled_linear"
    assert [(r.name, r.weight) for r in recipe.rewards] == [("hps", 0.7), ("clip-score", 1.4)]
    t, o = recipe.trainer, recipe.objective_options
    assert recipe.objective == "grpo"
    assert (t.group_size, t.prompts_per_iteration, o["timestep_fraction"]) == (16, 32, 1.0)
    assert (o["clip_range"], t.learning_rate, t.max_grad_norm) == (1e-4, 1e-5, 1.0)
    assert recipe.advantage_options["clip"] == 5.0


def test_recipe_runs_on_the_tiny_checkpoint(registry, tiny_sd: Path, tmp_path: Path) -> None:
    import dance.registry
    from dance.cli.app import main

    out = tmp_path / "run"
    args = ["run", "--recipe", "sd-hps-clip", "--model", str(tiny_sd), "--output-dir", str(out)]
    args += ["--no-progress", "policy.height=32", "policy.width=32", "sampler.num_steps=3"]
    args += ["trainer.iterations=1", "trainer.prompts_per_iteration=1", "trainer.group_size=2"]
    dance.registry._REGISTRY = registry
    try:
        with pytest.raises(SystemExit) as exc:
            main(args)
    finally:
        dance.registry.reset_registry()
    assert exc.value.code == 0
    assert (out / "checkpoints" / "iter-000001" / "trained" / "unet").is_dir()  # full fine-tune
