"""Contract tests every policy plugin runs, built-in or third-party.

Subclass :class:`PolicyContract` in a test module and provide two fixtures: ``policy_options``,
the ``[policy]`` recipe section of a small CPU policy (its ``name`` included), and ``prompts``,
two prompts the policy accepts (with images for image-to-video)::

    import pytest
    from dance.interfaces import Prompt
    from dance.testing.policy_contract import PolicyContract

    class TestMyPolicy(PolicyContract):
        @pytest.fixture
        def policy_options(self, tiny_checkpoint):
            return {"name": "my-model", "model": str(tiny_checkpoint), "height": 32, "width": 32}

        @pytest.fixture
        def prompts(self):
            return [Prompt("a red circle"), Prompt("two blue squares")]

Policies are built through the registry exactly as ``dance run`` builds them. The contract checks
shapes and dtypes, seeded determinism, batch invariance, gradients reaching only the trainable
weights, one GRPO update changing only those, an importance ratio of 1 before the first step, the
reference model, the save/load round trip, and ``dance run`` end to end for two iterations. It
brings its own reward (``contract-brightness``, the mean pixel value) so that it needs no reward
plugin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest
import torch

from dance.config import option
from dance.interfaces import Conditioning, Policy, Prompt, Reward, RewardOutput, Runtime

hookimpl = pluggy.HookimplMarker("dance")


@dataclasses.dataclass
class BrightnessConfig:
    scale: float = option(1.0, "Multiplier of the mean pixel value.")


class ContractBrightness(Reward):
    """Mean pixel value of an image or a video, so that every modality has a reward to train on."""

    name = "contract-brightness"
    config_class = BrightnessConfig
    modalities = ("image", "video")
    components = ("brightness",)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        return {"brightness": media.float().flatten(1).mean(dim=1) * self.config.scale}


class _ContractPlugin:
    @staticmethod
    @hookimpl
    def register_rewards(register: Callable[[type], None]) -> None:
        register(ContractBrightness)


def contract_registry():  # noqa: ANN201 - a dance.registry.Registry
    """The installed plugins plus the contract's own reward."""
    from dance.registry import load_registry

    return load_registry(extra={"dance-policy-contract": _ContractPlugin()})


def frozen_parameters(policy: Policy) -> dict[str, torch.Tensor]:
    """Every parameter held by the policy's modules that the optimizer must not touch."""
    trainable = {id(p) for p in policy.trainable_parameters()}
    found: dict[str, torch.Tensor] = {}
    for attr, value in vars(policy).items():
        if isinstance(value, torch.nn.Module):
            for name, param in value.named_parameters():
                if id(param) not in trainable:
                    found[f"{attr}.{name}"] = param
    return found


class PolicyContract:
    # Tolerance of comparisons between two computations of the same fp32 numbers.
    atol: float = 1e-4

    @pytest.fixture
    def policy_options(self) -> dict[str, Any]:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    @pytest.fixture
    def prompts(self) -> list[Prompt]:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    @pytest.fixture
    def train_prompts(self) -> str:
        """``trainer.prompts`` for the training tests: "" is the bundled text prompts; an
        image-to-video policy returns a JSONL file with images."""
        return ""

    @pytest.fixture
    def registry(self):  # noqa: ANN201
        return contract_registry()

    @pytest.fixture
    def make_policy(self, policy_options, registry) -> Callable[[], Policy]:
        options = {k: v for k, v in policy_options.items() if k != "name"}

        def make() -> Policy:
            return registry.create("policy", policy_options["name"], dict(options), Runtime())

        return make

    @pytest.fixture
    def policy(self, make_policy) -> Policy:
        return make_policy()

    @pytest.fixture
    def sampler_name(self, policy_options, registry) -> str:
        """The sampler ``dance run`` picks for this policy by default."""
        cls = registry.get("policy", policy_options["name"])
        return registry.default_sampler(cls.prediction_type)

    # ---- helpers --------------------------------------------------------------------------------

    def _timesteps(self, registry, sampler_name: str, batch: int) -> torch.Tensor:
        sampler = registry.create("sampler", sampler_name, {"num_steps": 4}, Runtime())
        schedule = sampler.schedule()
        return schedule.timesteps[torch.arange(batch) % schedule.num_steps]  # [B]

    def _inputs(self, policy, prompts, registry, sampler_name, seed=0):
        gen = torch.Generator().manual_seed(seed)
        latents = policy.initial_noise(len(prompts), gen)  # [B, *L]
        t = self._timesteps(registry, sampler_name, len(prompts))  # [B]
        return latents, t, policy.encode(prompts)

    @staticmethod
    def _perturb(policy: Policy, seed: int = 1, std: float = 0.05) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in policy.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * std)

    # ---- declaration and registration -----------------------------------------------------------

    def test_declares_what_it_is(self, policy, policy_options, registry):
        assert policy.name == policy_options["name"]
        assert registry.get("policy", policy.name) is type(policy)
        assert policy.modality in ("image", "video")
        assert policy.prediction_type in ("flow", "epsilon")
        assert dataclasses.is_dataclass(policy.config_class)
        assert isinstance(policy.config, policy.config_class)

    # ---- encode, noise, predict, decode ---------------------------------------------------------

    def test_encode_has_one_row_per_prompt(self, policy, prompts):
        cond = policy.encode(prompts)
        assert isinstance(cond, Conditioning) and cond.batch_size() == len(prompts)
        for value in cond.values():
            assert isinstance(value, torch.Tensor) and value.shape[0] == len(prompts)
        alone = policy.encode(prompts[1:2])
        for key, value in alone.items():
            torch.testing.assert_close(cond[key][1:2], value, atol=self.atol, rtol=1e-4)

    def test_initial_noise_is_seeded_fp32(self, policy):
        a = policy.initial_noise(2, torch.Generator().manual_seed(0))
        b = policy.initial_noise(2, torch.Generator().manual_seed(0))
        c = policy.initial_noise(2, torch.Generator().manual_seed(1))
        assert a.dtype == torch.float32 and a.shape[0] == 2
        expected_ndim = {"image": (3, 4), "video": (5,)}[policy.modality]
        assert a.ndim in expected_ndim, f"latents {tuple(a.shape)} for a {policy.modality} policy"
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert not torch.equal(a, c)
        assert abs(a.std().item() - 1.0) < 0.3 and abs(a.mean().item()) < 0.3

    def test_predict_shape_dtype_and_determinism(self, policy, prompts, registry, sampler_name):
        latents, t, cond = self._inputs(policy, prompts, registry, sampler_name)
        policy.train(False)
        with torch.no_grad():
            out = policy.predict(latents, t, cond)
            again = policy.predict(latents, t, cond)
        assert out.shape == latents.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, again, atol=0, rtol=0)

    def test_predict_is_batch_invariant(self, policy, prompts, registry, sampler_name):
        latents, t, cond = self._inputs(policy, prompts, registry, sampler_name)
        policy.train(False)
        with torch.no_grad():
            batched = policy.predict(latents, t, cond)
            for i in range(len(prompts)):
                row = torch.tensor([i])
                alone = policy.predict(latents[i : i + 1], t[i : i + 1], cond.select(row))
                torch.testing.assert_close(batched[i : i + 1], alone, atol=self.atol, rtol=1e-4)

    def test_decode_gives_media_in_unit_range(self, policy):
        latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            media = policy.decode(latents)
        assert media.dtype == torch.float32 and media.shape[0] == 2
        assert media.ndim == {"image": 4, "video": 5}[policy.modality]
        assert media.shape[1] == 3
        assert media.min() >= 0.0 and media.max() <= 1.0

    def test_generation_is_deterministic_under_a_seed(self, policy, prompts, registry):
        from dance.sampling.generate import generate

        sampler = registry.create("sampler", "ode", {"num_steps": 2}, Runtime())
        if policy.prediction_type not in sampler.prediction_types:
            sampler_name = {"epsilon": "ddim"}.get(policy.prediction_type)
            sampler = registry.create("sampler", sampler_name, {"num_steps": 2}, Runtime())
        seeds = list(range(len(prompts)))
        a = generate(policy, sampler, prompts, seeds, batch_size=2, deterministic=True)
        b = generate(policy, sampler, prompts, seeds, batch_size=1, deterministic=True)
        torch.testing.assert_close(a, b, atol=self.atol, rtol=1e-4)

    # ---- training -------------------------------------------------------------------------------

    def test_gradients_reach_only_trainable_weights(self, policy, prompts, registry, sampler_name):
        self._perturb(policy)  # LoRA B starts at zero; give A a gradient too
        trainable = policy.trainable_parameters()
        assert trainable, "a policy must have trainable parameters"
        assert all(p.requires_grad for p in trainable)
        frozen = frozen_parameters(policy)
        assert all(not p.requires_grad for p in frozen.values()), [
            n for n, p in frozen.items() if p.requires_grad
        ][:5]
        latents, t, cond = self._inputs(policy, prompts, registry, sampler_name)
        policy.train(True)
        policy.predict(latents, t, cond).square().mean().backward()
        missing = [i for i, p in enumerate(trainable) if p.grad is None or not p.grad.any()]
        assert not missing, f"{len(missing)} of {len(trainable)} trainable tensors got no gradient"

    def test_reference_is_the_base_model(self, make_policy, prompts, registry, sampler_name):
        policy, base = make_policy(), make_policy()
        policy.prepare_reference()
        self._perturb(policy, std=0.5)
        latents, t, cond = self._inputs(policy, prompts, registry, sampler_name)
        policy.train(False)
        base.train(False)
        with torch.no_grad():
            expected = base.predict(latents, t, cond)
            trained = policy.predict(latents, t, cond)
            with policy.reference():
                reference = policy.predict(latents, t, cond)
            after = policy.predict(latents, t, cond)
        assert not torch.allclose(trained, expected, atol=self.atol)
        torch.testing.assert_close(reference, expected, atol=self.atol, rtol=1e-4)
        torch.testing.assert_close(after, trained, atol=0, rtol=0)

    def test_trained_weights_round_trip(
        self, make_policy, prompts, registry, sampler_name, tmp_path
    ):
        policy = make_policy()
        self._perturb(policy, std=0.5)
        policy.save_trained(str(tmp_path / "trained"))
        loaded = make_policy()
        latents, t, cond = self._inputs(policy, prompts, registry, sampler_name)
        for p in (policy, loaded):
            p.train(False)
        with torch.no_grad():
            before = loaded.predict(latents, t, cond)
            loaded.load_trained(str(tmp_path / "trained"))
            expected = policy.predict(latents, t, cond)
            got = loaded.predict(latents, t, cond)
        assert not torch.allclose(before, expected, atol=self.atol)
        torch.testing.assert_close(got, expected, atol=self.atol, rtol=1e-4)

    def _trainer(self, policy_options, registry, sampler_name, train_prompts, tmp_path, **trainer):
        import dance.registry
        from dance.cli.recipe import resolve
        from dance.training.trainer import Trainer

        raw = {
            "policy": dict(policy_options),
            "sampler": {"name": sampler_name, "num_steps": 3},
            "rewards": [{"name": "contract-brightness"}],
            "trainer": {
                "prompts_per_iteration": 2,
                "group_size": 2,
                "share_initial_noise": False,
                "learning_rate": 1e-2,
                "prompts": train_prompts,
                **trainer,
            },
        }
        dance.registry._REGISTRY = registry
        try:
            recipe = resolve(raw, registry)
            return Trainer(recipe, tmp_path, Runtime(), registry)
        finally:
            dance.registry.reset_registry()

    def test_one_update_changes_only_trainable_weights_with_ratio_one(
        self, policy_options, registry, sampler_name, train_prompts, tmp_path
    ):
        trainer = self._trainer(
            policy_options, registry, sampler_name, train_prompts, tmp_path, old_log_probs="rollout"
        )
        policy = trainer.policy
        trainable = [p.detach().clone() for p in policy.trainable_parameters()]
        frozen = {n: p.detach().clone() for n, p in frozen_parameters(policy).items()}
        metrics = trainer.iteration(0)
        assert metrics["optimizer_steps"] == 1
        # The ratio against the rollout's own log-probs is 1 before the first optimizer step.
        assert metrics["ratio/first_step_max_dev"] < 1e-4
        after = policy.trainable_parameters()
        changed = [not torch.equal(a, p.detach()) for a, p in zip(trainable, after, strict=True)]
        assert any(changed), "no trainable weight changed after one update"
        moved = [n for n, p in frozen_parameters(policy).items() if not torch.equal(frozen[n], p)]
        assert not moved, f"frozen weights changed: {moved[:5]}"

    def test_dance_run_two_iterations(
        self, policy_options, registry, sampler_name, train_prompts, tmp_path
    ):
        """``dance run`` from the command line, as a user types it, for two iterations."""
        import dance.registry
        from dance.cli.app import main

        out = tmp_path / "run"
        options = {k: v for k, v in policy_options.items() if k != "name"}
        args = ["run", "--policy", policy_options["name"], "--reward", "contract-brightness"]
        args += ["--sampler", sampler_name, "--output-dir", str(out), "--no-progress"]
        args += [f"policy.{k}={_cli_value(v)}" for k, v in options.items()]
        args += ["trainer.iterations=2", "trainer.prompts_per_iteration=2", "trainer.group_size=2"]
        args += ["sampler.num_steps=2", "trainer.checkpoint_every=1", "trainer.sample_every=1"]
        if train_prompts:
            args.append(f"trainer.prompts={train_prompts}")
        dance.registry._REGISTRY = registry
        try:
            with pytest.raises(SystemExit) as exc:
                main(args)
        finally:
            dance.registry.reset_registry()
        assert exc.value.code == 0
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
        assert any((out / "checkpoints" / "iter-000002" / "trained").iterdir())
        assert (out / "samples").is_dir() and any((out / "samples").iterdir())


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value)
    return str(value)
