"""Where objective options go wrong in a recipe: each mistake gets one line saying where the key
belongs, and old [trainer] keys of GRPO still work with a note."""

import pytest

from dance.cli.app import _raw_recipe
from dance.cli.recipe import resolve
from dance.errors import ConfigError
from dance.registry import load_registry
from dance.testing import toy_policy


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def recipe(objective=None, trainer=None):
    return {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "flow-sde", "num_steps": 4},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "objective": dict(objective or {}),
        "trainer": dict(trainer or {}),
    }


def test_old_trainer_keys_move_to_the_objective_with_a_note(registry, capsys):
    resolved = resolve(recipe(trainer={"clip_range": 0.2, "kl_coef": 0.01}), registry)
    assert resolved.objective_options["clip_range"] == 0.2
    assert resolved.objective_options["kl_coef"] == 0.01
    err = capsys.readouterr().err
    assert "note: trainer.clip_range, trainer.kl_coef moved to the [objective] table" in err


def test_an_old_key_set_in_both_places_names_the_one_to_keep(registry):
    raw = recipe(objective={"clip_range": 0.1}, trainer={"clip_range": 0.2})
    with pytest.raises(ConfigError, match=r"trainer.clip_range is the old place of objective"):
        resolve(raw, registry)


@pytest.mark.parametrize(
    "objective, key, message",
    [
        (
            "grpo",
            "decay_rate",
            "objective.decay_rate is an option of objective 'nft', but this "
            "run trains with 'grpo': choose it with --objective nft",
        ),
        (
            "nft",
            "clip_range",
            "objective.clip_range is an option of objective 'grpo', but this run trains with 'nft'",
        ),
        (
            "grpo",
            "sde_window_schedule",
            "objective.sde_window_schedule is an option of the "
            "sampler 'flow-sde', not of the objective: set sampler.sde_window_schedule instead",
        ),
        (
            "grpo",
            "clip_rang",
            "unknown config field 'objective.clip_rang'. Did you mean 'clip_range'?",
        ),
    ],
)
def test_a_key_of_another_component_says_where_it_belongs(registry, objective, key, message):
    with pytest.raises(ConfigError) as info:
        resolve(recipe(objective={"name": objective, key: 1}), registry)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_objective_flag_says_which_recipe_options_it_drops(capsys):
    raw = _raw_recipe("demo", None, None, None, None, [], "nft")
    assert raw["objective"] == {"name": "nft"}
    err = capsys.readouterr().err
    assert "note: --objective nft replaces the recipe's [objective] table (of 'grpo':" in err
    assert "clip_range" in err and "`dance plugins nft` lists them" in err
    _raw_recipe("demo", None, None, None, None, [], "grpo")  # the recipe's own: nothing dropped
    assert capsys.readouterr().err == ""


def test_a_wrongly_cased_objective_name_gets_a_suggestion(registry):
    from dance.errors import UsageError

    with pytest.raises(UsageError, match="Did you mean 'nft'"):
        registry.get("objective", "NFT")
