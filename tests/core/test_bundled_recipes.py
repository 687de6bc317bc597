"""Every recipe shipped in dance/recipes resolves against the installed built-in plugins, and the
paper's model / reward pairings are all there (`--recipe NAME` finds them)."""

from importlib import resources

import pytest

from dance.cli.recipe import read_recipe, resolve
from dance.registry import load_registry

RECIPES = sorted(
    p.name.removesuffix(".toml")
    for p in (resources.files("dance") / "recipes").iterdir()
    if p.name.endswith(".toml")
)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("name", RECIPES)
def test_bundled_recipe_resolves(registry, name):
    recipe = resolve(read_recipe(name), registry)
    assert recipe.rewards and recipe.trainer.iterations >= 1


@pytest.mark.parametrize(
    "name, policy, rewards",
    [
        ("flux-hps", "flux", [("hps", "", 1.0)]),
        ("sd-hps-clip", "sd", [("hps", "", 0.7), ("clip-score", "", 1.4)]),
        ("hunyuan-video", "hunyuan-video", [("videoalign", "vq", 1.0)]),
        ("skyreels-i2v", "skyreels-i2v", [("videoalign", "mq", 1.0)]),
        ("sd3-pickscore", "sd3", [("pickscore", "", 1.0)]),
        ("qwen-image", "qwen-image", [("hps", "", 1.0)]),
        ("wan-t2v", "wan-t2v", [("clip-score", "", 1.0), ("pickscore", "", 0.5)]),
        ("wan-i2v", "wan-i2v", [("pickscore", "", 1.0)]),
        ("flux-kontext", "flux-kontext", [("pickscore", "", 1.0)]),
        ("demo", "flux", None),
    ],
)
def test_the_papers_pairings_are_bundled(registry, name, policy, rewards):
    recipe = resolve(read_recipe(name), registry)
    assert recipe.policy == policy
    if rewards is not None:
        assert [(r.name, r.component, r.weight) for r in recipe.rewards] == rewards


@pytest.mark.parametrize("name", RECIPES)
def test_bundled_recipe_requires_the_plugins_it_uses(registry, name):
    # The dependency of a bundled recipe on its plugins is declared in the recipe: exactly the
    # distributions that provide its policy, sampler and rewards (the core's own are left out).
    raw = read_recipe(name)
    used = [("policy", raw["policy"]["name"]), ("sampler", raw["sampler"]["name"])]
    used += [("reward", entry["name"]) for entry in raw["rewards"]]
    providers = {
        registry.plugins[registry.components[kind][component].plugin].distribution
        for kind, component in used
    }
    assert sorted(raw["requires"]) == sorted(providers - {"dance-grpo"})
