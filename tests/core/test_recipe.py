import sys

import pytest

from dance.cli.recipe import apply_override, parse_reward_arg, read_recipe
from dance.config import build, describe, parse_value
from dance.errors import ConfigError, UsageError
from dance.objectives.grpo import GRPOConfig
from dance.training.run_config import dumps_toml
from dance.training.trainer_config import TrainerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_trainer_defaults_and_descriptions():
    cfg = build(TrainerConfig, {})
    assert cfg.group_size == 12 and cfg.learning_rate == 1e-5
    grpo = build(GRPOConfig, {})
    assert grpo.timestep_fraction == 0.6 and grpo.clip_range == 1e-4
    for config in (TrainerConfig, GRPOConfig):
        fields = describe(config)
        assert all(f.help for f in fields), [f.name for f in fields if not f.help]


@pytest.mark.parametrize(
    "config, values, message",
    [
        (TrainerConfig, {"group_size": 1}, "trainer.group_size must be at least 2"),
        (GRPOConfig, {"timestep_fraction": 0.0}, "timestep_fraction must be greater than 0"),
        (GRPOConfig, {"timestep_fraction": 1.5}, "timestep_fraction must be at most 1"),
        (TrainerConfig, {"learning_rate": -1e-5}, "learning_rate must be greater than 0"),
        (GRPOConfig, {"old_log_probs": "stale"}, "must be one of"),
        (TrainerConfig, {"group_size": "many"}, "expected an integer"),
        (TrainerConfig, {"learnig_rate": 1e-5}, "Did you mean 'learning_rate'"),
    ],
)
def test_out_of_range_values_are_config_errors(config, values, message):
    with pytest.raises(ConfigError, match=message):
        build(config, values, prefix="trainer.")


def test_coercion_from_cli_strings():
    cfg = build(GRPOConfig, {"clip_range": "0.1", "kl_coef": "0.1", "train_last_step": "true"})
    assert (cfg.clip_range, cfg.kl_coef, cfg.train_last_step) == (0.1, 0.1, True)


def test_parse_value():
    assert parse_value("1e-5") == 1e-5
    assert parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("/some/path") == "/some/path"


def test_reward_argument_syntax():
    assert parse_reward_arg("hps") == {"name": "hps"}
    assert parse_reward_arg("clip:1.4") == {"name": "clip", "weight": 1.4}
    assert parse_reward_arg("videoalign.VQ:1") == {
        "name": "videoalign",
        "component": "VQ",
        "weight": 1.0,
    }
    with pytest.raises(UsageError, match="not a number"):
        parse_reward_arg("clip:heavy")


def test_overrides():
    raw = {"rewards": [{"name": "a"}, {"name": "b", "component": "x"}]}
    apply_override(raw, "trainer.learning_rate=2e-5")
    apply_override(raw, "policy.height=256")
    apply_override(raw, "rewards.a.weight=2")
    apply_override(raw, "rewards.b.x.weight=3")
    apply_override(raw, "rewards.0.threshold=0.5")
    assert raw["trainer"] == {"learning_rate": 2e-5}
    assert raw["policy"] == {"height": 256}
    assert raw["rewards"][0] == {"name": "a", "weight": 2, "threshold": 0.5}
    assert raw["rewards"][1]["weight"] == 3
    for bad, msg in [
        ("trainer", "section.field=value"),
        ("optimizer.lr=1", "must start with one of"),
        ("rewards.c.weight=1", "no reward 'c'"),
        ("rewards.9.weight=1", "has 2 rewards"),
    ]:
        with pytest.raises(UsageError, match=msg):
            apply_override(raw, bad)


def test_malformed_and_missing_recipes(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[trainer\ngroup_size = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_recipe(str(bad))
    with pytest.raises(UsageError, match="does not exist"):
        read_recipe(str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="unknown recipe 'nope'"):
        read_recipe("nope")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[optimiser]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown section 'optimiser'"):
        read_recipe(str(wrong))


def test_toml_writer_round_trips():
    data = {
        "policy": {"name": "flux", "height": 32, "lora_targets": ["to_q", "to_out.0"], "g": 3.5},
        "rewards": [{"name": "a", "weight": 1.0}, {"name": "b", "options": {"k": "v"}}],
        "trainer": {"learning_rate": 1e-5, "prompts": 'say "hi"\\', "share_initial_noise": True},
    }
    assert tomllib.loads(dumps_toml(data)) == data


def test_prompt_lists_from_packages():
    from dance.training.prompts import read_prompts

    prompts = read_prompts("pkg:dance/data/prompts.txt")
    assert prompts == read_prompts("")
    with pytest.raises(UsageError, match="no installed package 'nope'"):
        read_prompts("pkg:nope/x.txt")
    with pytest.raises(UsageError, match="has no file 'missing.txt'"):
        read_prompts("pkg:dance/missing.txt")


def test_evaluation_section_is_checked():
    from dance.cli.recipe import resolve
    from dance.registry import load_registry
    from dance.testing import toy_policy

    registry = load_registry(extra={"toy": toy_policy})
    raw = {
        "policy": {"name": "toy-flow"},
        "rewards": [{"name": "jpeg-compressibility"}],
        "evaluation": {"prompts": "pkg:dance/data/prompts.txt", "reward": "jpeg"},
    }
    with pytest.raises(ConfigError, match="not one of the recipe's rewards"):
        resolve(raw, registry)
    raw["evaluation"] = {"prompts": "x.txt", "success": "success"}
    with pytest.raises(ConfigError, match="has no component 'success'"):
        resolve(raw, registry)


def test_a_recipe_declares_the_plugins_it_needs(tmp_path, monkeypatch):
    recipe = tmp_path / "needs.toml"
    recipe.write_text('requires = ["dance-jpeg", "dance-no-such-plugin"]\n[trainer]\n')
    with pytest.raises(
        UsageError,
        match=r"needs.toml needs the plugin distribution "
        r"dance-no-such-plugin, not installed: install it",
    ):
        read_recipe(str(recipe))
    recipe.write_text('requires = "dance-jpeg"\n')
    with pytest.raises(ConfigError, match="'requires' must be a list of plugin distribution"):
        read_recipe(str(recipe))


def test_the_resolved_recipe_keeps_its_requirements():
    from dance.cli.recipe import resolve
    from dance.registry import load_registry

    recipe = resolve(read_recipe("demo"), load_registry())
    assert "dance-shapes" in recipe.requires
    written = tomllib.loads(dumps_toml(recipe.to_toml_dict()))
    assert written["requires"] == recipe.requires
