import sys
import types
from dataclasses import dataclass
from importlib import metadata

import pytest
import torch

import dance
from dance.config import option
from dance.errors import UsageError
from dance.registry import DuplicateComponentError, load_registry


@dataclass
class _Cfg:
    scale: float = option(1.0, "a scale")


def _reward_class(reward_name):
    class _R(dance.Reward):
        name = reward_name
        config_class = _Cfg
        components = ("value",)

        def score(self, media, prompts):
            return {"value": media.mean(dim=(1, 2, 3)) * self.config.scale}

    return _R


def _plugin_module(monkeypatch, module_name, reward_names, fail_in_hook=False):
    module = types.ModuleType(module_name)

    @dance.hookimpl
    def register_rewards(register):
        if fail_in_hook:
            raise RuntimeError("boom in hook")
        for n in reward_names:
            register(_reward_class(n))

    module.register_rewards = register_rewards
    monkeypatch.setitem(sys.modules, module_name, module)
    return module


def _entry_points(monkeypatch, eps):
    real = metadata.entry_points

    def fake(group=None, **kw):
        if group == "dance":
            return eps
        return real(group=group, **kw)

    monkeypatch.setattr("dance.registry.metadata.entry_points", fake)


def _ep(name, value):
    return metadata.EntryPoint(name=name, value=value, group="dance")


def test_broken_plugin_is_reported_and_others_load(monkeypatch):
    _plugin_module(monkeypatch, "_dance_test_good", ["good-reward"])
    _entry_points(
        monkeypatch,
        [_ep("broken", "_dance_test_module_that_does_not_exist"), _ep("good", "_dance_test_good")],
    )
    registry = load_registry()
    assert not registry.plugins["broken"].loaded
    assert "ModuleNotFoundError" in registry.plugins["broken"].error
    assert registry.plugins["good"].loaded
    assert registry.plugins["good"].components == [("reward", "good-reward")]
    # Unknown names mention the broken plugin so the user knows where to look.
    with pytest.raises(dance.errors.UsageError, match="broken"):
        registry.get("reward", "missing")


def test_plugin_whose_hook_raises_is_reported(monkeypatch):
    _plugin_module(monkeypatch, "_dance_test_bad_hook", ["x"], fail_in_hook=True)
    _plugin_module(monkeypatch, "_dance_test_good2", ["y"])
    _entry_points(monkeypatch, [_ep("bad", "_dance_test_bad_hook"), _ep("ok", "_dance_test_good2")])
    registry = load_registry()
    assert not registry.plugins["bad"].loaded
    assert "boom in hook" in registry.plugins["bad"].error
    assert registry.names("reward") == ["y"]


def test_duplicate_names_fail_naming_both_plugins(monkeypatch):
    _plugin_module(monkeypatch, "_dance_test_a", ["same"])
    _plugin_module(monkeypatch, "_dance_test_b", ["same"])
    _entry_points(monkeypatch, [_ep("plugin-a", "_dance_test_a"), _ep("plugin-b", "_dance_test_b")])
    with pytest.raises(DuplicateComponentError, match="plugin-a.*plugin-b"):
        load_registry()


def test_environment_variable_restricts_plugins(monkeypatch):
    _plugin_module(monkeypatch, "_dance_test_c", ["c"])
    _plugin_module(monkeypatch, "_dance_test_d", ["d"])
    _entry_points(monkeypatch, [_ep("c", "_dance_test_c"), _ep("d", "_dance_test_d")])
    monkeypatch.setenv("DANCE_PLUGINS", "d")
    registry = load_registry()
    assert list(registry.plugins) == ["d"]
    assert registry.names("reward") == ["d"]
    monkeypatch.setenv("DANCE_PLUGINS", "")
    assert load_registry().plugins == {}


def test_registering_a_non_component_is_reported(monkeypatch):
    module = types.ModuleType("_dance_test_wrong")

    @dance.hookimpl
    def register_policies(register):
        register(object)

    module.register_policies = register_policies
    monkeypatch.setitem(sys.modules, "_dance_test_wrong", module)
    _entry_points(monkeypatch, [_ep("wrong", "_dance_test_wrong")])
    info = load_registry().plugins["wrong"]
    assert not info.loaded and "subclass of Policy" in info.error


def test_unknown_name_suggests_closest():
    registry = load_registry()
    with pytest.raises(dance.errors.UsageError, match="Did you mean 'group'"):
        registry.get("advantage", "grup")


def test_create_builds_config_and_validates(monkeypatch):
    _plugin_module(monkeypatch, "_dance_test_e", ["e"])
    _entry_points(monkeypatch, [_ep("e", "_dance_test_e")])
    registry = load_registry()
    reward = registry.create("reward", "e", {"scale": 2}, dance.Runtime())
    out = reward.score(torch.ones(2, 3, 4, 4), [dance.Prompt("a")] * 2)
    assert out["value"].tolist() == [2.0, 2.0]
    with pytest.raises(dance.errors.ConfigError, match="unknown config field.*scal"):
        registry.create("reward", "e", {"scal": 2}, dance.Runtime())


def _sampler_plugin(monkeypatch, module_name, sampler_name, **roles):
    class _S(dance.Sampler):
        name = sampler_name
        config_class = _Cfg
        prediction_types = ("flow",)

        def schedule(self, num_steps=None, device=None):  # pragma: no cover - never sampled
            raise NotImplementedError

        def step(self, *args, **kwargs):  # pragma: no cover - never sampled
            raise NotImplementedError

    for attribute, value in roles.items():
        setattr(_S, attribute, value)
    module = types.ModuleType(module_name)

    @dance.hookimpl
    def register_samplers(register):
        register(_S)

    module.register_samplers = register_samplers
    monkeypatch.setitem(sys.modules, module_name, module)
    return module


def test_samplers_declare_the_defaults_the_core_uses(monkeypatch):
    # The core names no sampler: it asks which one declares itself the default / noise-free one.
    _sampler_plugin(monkeypatch, "p_sde", "my-sde", default_for=("flow",))
    _sampler_plugin(
        monkeypatch,
        "p_ode",
        "my-ode",
        deterministic_for=("flow",),
        deterministic_options={"scale": 0.0},
    )
    _entry_points(monkeypatch, [_ep("sde", "p_sde"), _ep("ode", "p_ode")])
    registry = load_registry()
    assert registry.default_sampler("flow") == "my-sde"
    assert registry.deterministic_sampler("flow") == ("my-ode", {"scale": 0.0})
    with pytest.raises(UsageError, match="no installed sampler declares itself the default"):
        registry.default_sampler("epsilon")


def test_two_samplers_claiming_a_default_fail_naming_both(monkeypatch):
    _sampler_plugin(monkeypatch, "p_a", "sde-a", default_for=("flow",))
    _sampler_plugin(monkeypatch, "p_b", "sde-b", default_for=("flow",))
    _entry_points(monkeypatch, [_ep("a", "p_a"), _ep("b", "p_b")])
    with pytest.raises(UsageError, match=r"'sde-a' \(plugin 'a'\) and 'sde-b'.*--sampler"):
        load_registry().default_sampler("flow")


def test_built_in_samplers_declare_their_roles():
    registry = load_registry()
    assert registry.default_sampler("flow") == "dance-sde"
    assert registry.default_sampler("epsilon") == "ddim"
    assert registry.deterministic_sampler("flow") == ("ode", {})
    assert registry.deterministic_sampler("epsilon") == ("ddim", {"eta": 0.0})
