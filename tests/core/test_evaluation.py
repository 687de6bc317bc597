"""The evaluation sampler: deterministic for the policy's kind, on the training schedule."""

import pytest

from dance.interfaces import Runtime
from dance.registry import load_registry
from dance.training.evaluation import EvaluationConfig, Evaluator


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def evaluator(registry, sampler_options, prediction_type, **config):
    cfg = EvaluationConfig(prompts="", num_steps=5, **config)
    return Evaluator(cfg, sampler_options, None, registry, Runtime(), prediction_type)


def test_flow_policies_evaluate_with_the_ode_on_the_training_shift(registry):
    ev = evaluator(registry, {"num_steps": 12, "shift": 5.0, "noise_level": 0.7}, "flow")
    assert ev.sampler.name == "ode" and not ev.sampler.stochastic
    assert ev.sampler.config.shift == 5.0 and ev.sampler.config.num_steps == 5


def test_diffusion_policies_evaluate_with_ddim_eta_0_on_the_training_betas(registry):
    training = {"num_steps": 50, "eta": 1.0, "beta_end": 0.02, "timestep_spacing": "trailing"}
    ev = evaluator(registry, training, "epsilon")
    cfg = ev.sampler.config
    assert ev.sampler.name == "ddim" and cfg.eta == 0.0 and cfg.num_steps == 5
    assert cfg.beta_end == 0.02 and cfg.timestep_spacing == "trailing"


def test_a_named_sampler_wins(registry):
    ev = evaluator(registry, {"shift": 3.0}, "flow", sampler="flow-sde")
    assert ev.sampler.name == "flow-sde" and ev.sampler.config.shift == 3.0
