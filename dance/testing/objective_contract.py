"""Contract tests every objective plugin runs, built-in or third-party.

Subclass :class:`ObjectiveContract` in a test module and name the objective, with the options and
sampler to test it with; the contract trains the toy policy (:mod:`dance.testing.toy_policy`) with
it through the real trainer::

    from dance.testing.objective_contract import ObjectiveContract

    class TestMyObjective(ObjectiveContract):
        objective = "my-objective"
        options = {"beta": 0.5}
        sampler = {"name": "ode", "num_steps": 4}
        trainer = {"share_initial_noise": False}  # a deterministic sampler needs distinct starts
        plugins = {"mine": my_package.plugin}  # when it is not installed as an entry point
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import dance
from dance.cli.recipe import resolve
from dance.config import describe
from dance.interfaces import Objective
from dance.registry import Registry, load_registry
from dance.testing import toy_policy
from dance.training.trainer import Trainer


class ObjectiveContract:
    objective: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    sampler: ClassVar[dict[str, Any]] = {"name": "dance-sde", "num_steps": 4}
    plugins: ClassVar[dict[str, Any]] = {}
    trainer: ClassVar[dict[str, Any]] = {}  # trainer settings on top of the contract's

    @pytest.fixture
    def registry(self) -> Registry:
        return load_registry(extra={"toy": toy_policy, **self.plugins})

    def make(self, registry: Registry, folder: Path, **trainer: Any) -> Trainer:
        raw = {
            "policy": {"name": "toy-flow"},
            "sampler": dict(self.sampler),
            "rewards": [{"name": "jpeg-incompressibility"}],
            "objective": {"name": self.objective, **self.options},
            "trainer": {
                "iterations": 2,
                "prompts_per_iteration": 2,
                "group_size": 3,
                "micro_batch_size": 2,
                "gradient_accumulation_steps": 2,
                "learning_rate": 1e-2,
                "sample_every": 0,
                "checkpoint_every": 1,
                **self.trainer,
                **trainer,
            },
        }
        return Trainer(resolve(raw, registry), folder, dance.Runtime(), registry)

    # ---- the class ------------------------------------------------------------------------------

    def test_declares_what_the_trainer_needs(self, registry):
        cls = registry.get("objective", self.objective)
        assert issubclass(cls, Objective) and cls.name == self.objective
        assert cls.keeps in ("trajectory", "samples")
        assert isinstance(cls.sampler_requirement, str) and cls.sampler_requirement
        fields = describe(cls.config_class)
        assert all(f.help for f in fields), [f.name for f in fields if not f.help]

    # ---- one iteration -------------------------------------------------------------------------

    def test_loss_is_one_finite_value_per_pair_with_gradients(self, registry, tmp_path):
        trainer = self.make(registry, tmp_path)
        seen: list[tuple[int, bool, bool]] = []
        real = trainer.objective.loss

        def loss(rollout, batch):
            out = real(rollout, batch)
            seen.append(
                (out.shape == batch.weight.shape, out.requires_grad, bool(out.isfinite().all()))
            )
            return out

        trainer.objective.loss = loss  # type: ignore[method-assign]
        before = [p.detach().clone() for p in trainer.params]
        metrics = trainer.iteration(0)
        assert seen and all(all(s) for s in seen), seen
        assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
        changed = [not torch.equal(b, p) for b, p in zip(before, trainer.params, strict=True)]
        assert any(changed), "an iteration changed no trained weight"

    def test_rollout_keeps_what_the_objective_declares(self, registry, tmp_path):
        trainer = self.make(registry, tmp_path)
        kept = {}
        real = trainer.update

        def update(rollout, *args, **kwargs):
            kept["rollout"] = rollout
            return real(rollout, *args, **kwargs)

        trainer.update = update  # type: ignore[method-assign]
        trainer.iteration(0)
        rollout = kept["rollout"]
        assert rollout.samples.shape[0] == trainer.layout.per_rank
        if trainer.objective.keeps == "trajectory":
            assert rollout.trajectory is not None and rollout.log_probs is not None
        else:
            assert rollout.trajectory is None and rollout.log_probs is None

    def test_padding_pairs_do_not_train(self, registry, tmp_path):
        # The trainer multiplies each pair's loss by its weight: a batch whose pairs are all
        # padding must leave every gradient at zero.
        trainer = self.make(registry, tmp_path)
        grads: list[list[torch.Tensor | None]] = []
        real = trainer.objective.loss

        def loss(rollout, batch):
            batch.weight = torch.zeros_like(batch.weight)
            return real(rollout, batch)

        trainer.objective.loss = loss  # type: ignore[method-assign]
        real_step = trainer.optimizer.step

        def step(*args, **kwargs):
            grads.append([None if p.grad is None else p.grad.clone() for p in trainer.params])
            return real_step(*args, **kwargs)

        trainer.optimizer.step = step  # type: ignore[method-assign]
        with warnings.catch_warnings():  # torch warns that step was replaced
            warnings.simplefilter("ignore", UserWarning)
            trainer.iteration(0)
        assert grads
        for step_grads in grads:
            assert all(g is None or not g.abs().sum() for g in step_grads)

    # ---- runs ----------------------------------------------------------------------------------

    def test_same_seed_same_weights(self, registry, tmp_path):
        runs = []
        for name in ("a", "b"):
            trainer = self.make(registry, tmp_path / name, checkpoint_every=0)
            trainer.run()
            runs.append([p.detach().clone() for p in trainer.params])
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)

    def test_resume_continues_bit_for_bit(self, registry, tmp_path):
        whole = self.make(registry, tmp_path / "whole", iterations=3)
        whole.run()
        first = self.make(registry, tmp_path / "cut", iterations=1)
        first.run()
        rest = self.make(registry, tmp_path / "cut", iterations=3)
        rest.run(resume=True)
        for a, b in zip(whole.params, rest.params, strict=True):
            assert torch.equal(a.detach(), b.detach())
        for name, tensors in whole.objective.shadow_weights().items():
            for a, b in zip(tensors, rest.objective.shadow_weights()[name], strict=True):
                assert torch.equal(a, b), name
