"""DiffusionNFT (objective `nft`): the loss against an independent numpy computation, the soft
update of the sampling policy and its schedule, the rollout's weights, sampler checks, and short
runs on the toy policy and on the bundled tiny FLUX demo model (train, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dance
from dance.cli.app import main
from dance.cli.recipe import resolve
from dance.errors import ConfigError
from dance.interfaces import Rollout, Schedule, TrainBatch, TrainingContext
from dance.objectives.nft import NFTConfig, NFTObjective, old_policy_decay
from dance.registry import load_registry, reset_registry
from dance.testing import toy_policy
from dance.testing.toy_policy import ToyFlowPolicy, ToyPolicyConfig
from dance.training.trainer import Trainer


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def make_objective(**options) -> tuple[NFTObjective, ToyFlowPolicy]:
    policy = ToyFlowPolicy(ToyPolicyConfig(), dance.Runtime())
    with torch.no_grad():  # a LoRA delta away from the base model, so the KL term is not 0
        policy.lora_b.copy_(torch.randn(policy.lora_b.shape, generator=_gen(1)) * 0.2)
    objective = NFTObjective(NFTConfig(**options), dance.Runtime())
    objective.bind(TrainingContext(policy, seed=3))
    return objective, policy


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_rollout(policy: ToyFlowPolicy) -> Rollout:
    prompts = [dance.Prompt(t) for t in ("a red circle", "two squares", "a blue cat")]
    x0 = torch.randn(3, 4, 8, 8, generator=_gen(2))  # [n, C, H, W]
    timesteps = torch.tensor([1.0, 0.75, 0.4, 0.1])
    return Rollout(
        sampler=None,  # type: ignore[arg-type] - NFT never reads the sampler
        schedule=Schedule(timesteps=timesteps, levels=torch.cat([timesteps, torch.zeros(1)])),
        cond=policy.encode(prompts),
        samples=x0,
        reward_latents=x0,
    )


def batch_of(units, advantages, weight=(True, True, True), samples=(4, 9, 2)) -> TrainBatch:
    return TrainBatch(
        rows=torch.tensor([0, 1, 2]),
        samples=torch.tensor(samples),
        units=torch.tensor(units),
        weight=torch.tensor(weight),
        advantages=torch.tensor(advantages),
        iteration=5,
        window=0,
        index=0,
    )


def numpy_nft_loss(v, v_old, v_ref, x0, xt, t, adv, beta, clip, kl_coef, adaptive):
    """DiffusionNFT's per-sample loss written out in float64 numpy from the paper / reference
    code, independently of dance.objectives.nft."""
    t = t.reshape(-1, 1, 1, 1)
    r = np.clip(np.clip(adv, -clip, clip) / clip / 2 + 0.5, 0, 1)
    v_pos = (1 - beta) * v_old + beta * v
    v_neg = (1 + beta) * v_old - beta * v
    eps = (xt - (1 - t) * x0) / t

    def flow_matching(u):
        if not adaptive:
            return ((u - (eps - x0)) ** 2).mean(axis=(1, 2, 3))
        err = (xt - t * u) - x0
        return (err**2).mean(axis=(1, 2, 3)) / np.maximum(np.abs(err).mean(axis=(1, 2, 3)), 1e-5)

    loss = clip / beta * (r * flow_matching(v_pos) + (1 - r) * flow_matching(v_neg))
    return loss + kl_coef * ((v - v_ref) ** 2).mean(axis=(1, 2, 3))


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 1.0},
        {"beta": 0.1, "adv_clip_max": 2.0, "kl_coef": 0.3},
        {"beta": 0.5, "adaptive_weighting": False},
    ],
)
def test_loss_matches_an_independent_numpy_computation(options):
    objective, policy = make_objective(**options)
    cfg = objective.config
    old = objective.shadow_weights()["nft_old"]
    with torch.no_grad():  # a sampling policy apart from the trained one
        for i, s in enumerate(old):
            s.add_(torch.randn(s.shape, generator=_gen(10 + i)) * 0.1)
    rollout = tiny_rollout(policy)
    batch = batch_of(units=[0, 2, 3], advantages=[1.5, -7.0, 0.4])
    objective.begin_update(rollout, [[batch]])
    loss = objective.loss(rollout, batch)  # [3]
    loss.sum().backward()  # gradients reach the trained parameters (through v only)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())

    # The inputs, recomputed outside the objective: x_t, and v under each set of weights.
    xt = objective.forward_noised(rollout, batch)
    t = rollout.schedule.timesteps[batch.units]
    cond = rollout.cond.select(batch.rows)
    with torch.no_grad():
        v = policy.predict(xt, t, cond)
        with policy.reference():
            v_ref = policy.predict(xt, t, cond)
        trained = [p.detach().clone() for p in policy.trainable_parameters()]
        for p, s in zip(policy.trainable_parameters(), old, strict=True):
            p.copy_(s)
        v_old = policy.predict(xt, t, cond)
        for p, s in zip(policy.trainable_parameters(), trained, strict=True):
            p.copy_(s)
    expected = numpy_nft_loss(
        *(a.double().numpy() for a in (v, v_old, v_ref, rollout.samples, xt, t)),
        batch.advantages.double().numpy(),
        cfg.beta,
        cfg.adv_clip_max,
        cfg.kl_coef,
        cfg.adaptive_weighting,
    )
    assert np.allclose(loss.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v, v_old)  # the check above did see the two policies apart


def test_forward_noise_is_keyed_by_sample_and_unit():
    objective, policy = make_objective()
    rollout = tiny_rollout(policy)
    a = objective.forward_noised(rollout, batch_of([0, 1, 2], [0.0] * 3, samples=(4, 9, 2)))
    # The same (sample, unit) pairs in another order / another micro-batch draw the same noise.
    swapped = TrainBatch(
        rows=torch.tensor([2, 0]),
        samples=torch.tensor([2, 4]),
        units=torch.tensor([2, 0]),
        weight=torch.tensor([True, True]),
        advantages=torch.zeros(2),
        iteration=5,
        window=1,
        index=3,
    )
    b = objective.forward_noised(rollout, swapped)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    # x_t = (1 - t) x0 + t eps: at t = 1 it is the noise alone, whose statistics are N(0, 1).
    assert a[0].std().item() == pytest.approx(1.0, abs=0.2)
    other_unit = objective.forward_noised(rollout, batch_of([3, 1, 2], [0.0] * 3))
    assert not torch.allclose(other_unit[0], a[0])


def test_published_decay_schedules():
    type1 = NFTConfig()  # DiffusionNFT decay_type 1 (the default of its configs)
    assert [old_policy_decay(s, type1) for s in (0, 1, 100, 499, 500, 2000)] == pytest.approx(
        [0.0, 0.001, 0.1, 0.499, 0.5, 0.5]
    )
    type2 = NFTConfig(decay_rate=0.0075, decay_max=0.999, decay_flat=75)  # its OCR setting
    assert [old_policy_decay(s, type2) for s in (0, 74, 75, 175, 208, 500)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.75, 0.9975, 0.999]
    )
    assert old_policy_decay(1000, NFTConfig(decay_max=0.0)) == 0.0  # type 0: always on-policy


def test_soft_update_once_per_iteration_after_its_last_step():
    objective, policy = make_objective(decay_rate=0.1)
    rollout = tiny_rollout(policy)
    old = objective.shadow_weights()["nft_old"]
    start = [s.clone() for s in old]
    batches = [[batch_of([0, 1, 2], [1.0, -1.0, 0.0])], [batch_of([1, 2, 3], [1.0, -1.0, 0.0])]]
    batches[1][0].window = 1
    objective.begin_update(rollout, batches)
    params = policy.trainable_parameters()
    with torch.no_grad():
        for p in params:  # stands for the first optimizer step
            p.add_(0.5)
    objective.after_optimizer_step()
    assert all(torch.equal(s, s0) for s, s0 in zip(old, start, strict=True))  # not yet
    with torch.no_grad():
        for p in params:
            p.add_(0.25)
    objective.after_optimizer_step()
    objective.end_update()  # the trainer's call after the iteration's last optimizer step
    eta = 0.2  # two optimizer steps so far x 0.1
    for s, s0, p in zip(old, start, params, strict=True):
        assert torch.allclose(s, eta * s0 + (1 - eta) * p.detach(), atol=1e-6)
    assert objective.state_dict() == {"optimizer_steps": 2}
    assert objective.metrics()["old_decay"] == pytest.approx(0.2)


def test_rollout_runs_with_the_old_weights_and_restores_the_trained_ones():
    objective, policy = make_objective()
    old = objective.shadow_weights()["nft_old"]
    with torch.no_grad():
        for s in old:
            s.mul_(0.5)
    trained = [p.detach().clone() for p in policy.trainable_parameters()]
    with objective.rollout_weights():
        for p, s in zip(policy.trainable_parameters(), old, strict=True):
            assert torch.equal(p.detach(), s)
    for p, t in zip(policy.trainable_parameters(), trained, strict=True):
        assert torch.equal(p.detach(), t)


def test_sampler_and_policy_checks(registry):
    ode, ddim = registry.get("sampler", "ode"), registry.get("sampler", "ddim")
    NFTObjective.check_sampler(NFTConfig(), ode, ode.config_class())  # deterministic: accepted
    with pytest.raises(ConfigError, match="flow"):
        NFTObjective.check_sampler(NFTConfig(), ddim, ddim.config_class())

    class EpsilonToy(ToyFlowPolicy):
        prediction_type = "epsilon"

    objective = NFTObjective(NFTConfig(), dance.Runtime())
    policy = EpsilonToy(ToyPolicyConfig(), dance.Runtime())
    with pytest.raises(ConfigError, match="flow .*policy 'toy-flow' predicts epsilon"):
        objective.bind(TrainingContext(policy, seed=0))
    with pytest.raises(ConfigError, match="share_initial_noise=false"):
        resolve(toy_raw(trainer={"share_initial_noise": True}), registry)


def toy_raw(trainer=None, objective=None) -> dict:
    return {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "ode", "num_steps": 5},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "objective": {"name": "nft", "beta": 0.5, "kl_coef": 0.01, **(objective or {})},
        "trainer": {
            "iterations": 3,
            "prompts_per_iteration": 2,
            "group_size": 4,
            "share_initial_noise": False,
            "micro_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-2,
            "sample_every": 0,
            "checkpoint_every": 1,
            **(trainer or {}),
        },
    }


def test_toy_run_trains_and_resumes_bit_for_bit(registry, tmp_path):
    def trainer(folder, iterations):
        recipe = resolve(toy_raw({"iterations": iterations}), registry)
        return Trainer(recipe, tmp_path / folder, dance.Runtime(), registry)

    straight = trainer("a", 3)
    initial = [p.detach().clone() for p in straight.params]
    summary = straight.run()
    assert any(not torch.equal(p, q) for p, q in zip(straight.params, initial, strict=True))
    assert all(torch.isfinite(p).all() for p in straight.params)
    metrics = summary["metrics"]
    for key in ("loss", "loss/positive", "loss/negative", "r/mean", "kl", "old_gap", "old_decay"):
        assert np.isfinite(metrics[key]), key
    assert metrics["old_gap"] > 0  # the sampling policy lags the trained one
    assert metrics["old_decay"] > 0

    first = trainer("b", 1)
    first.run()
    resumed = trainer("b", 3)
    resumed.run(resume=True)
    assert resumed.objective.optimizer_steps == straight.objective.optimizer_steps
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)
    old_a = straight.objective.shadow_weights()["nft_old"]
    old_b = resumed.objective.shadow_weights()["nft_old"]
    for a, b in zip(old_a, old_b, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_demo_nft_recipe_trains_the_tiny_flux_model_from_the_command_line(tmp_path, capsys):
    reset_registry()
    out_dir = tmp_path / "nft"
    args = [
        "run",
        "--recipe",
        "demo-nft",
        "--no-progress",
        "--output-dir",
        str(out_dir),
        "objective.name=nft",
        "sampler.name=ode",
        "sampler.num_steps=4",
        "trainer.iterations=2",
        "trainer.prompts_per_iteration=2",
        "trainer.group_size=2",
        "trainer.checkpoint_every=0",
        "trainer.sample_every=0",
        "evaluation.prompts=",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert m["optimizer_steps"] >= 1 and np.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert (out_dir / "checkpoints" / "latest").read_text() == "iter-000002"
