"""The contract every :class:`dance.interfaces.Reward` keeps, as a pytest mixin.

Subclass :class:`RewardContract` in a test module and provide a ``reward`` fixture::

    import pytest
    from dance.interfaces import Runtime
    from dance.testing.reward_contract import RewardContract

    class TestMyReward(RewardContract):
        @pytest.fixture
        def reward(self):
            return MyReward(MyConfig(), Runtime())

        # optional: per-sample shapes of the media to score, by modality
        @pytest.fixture
        def media_shape(self):
            return {"image": (3, 224, 224), "video": (3, 4, 224, 224)}

The inherited tests check, for every modality the reward instance accepts: the output is a dict
whose keys are ``reward.components`` in order, each a fp32 ``[B]`` tensor on the input's (or the
runtime's) device, finite for valid input; a batch scores as each sample alone does; the same input
scores the same twice; the input is not modified; and the output carries no gradient unless the
instance's ``is_differentiable()`` says so. Override :meth:`RewardContract.make_media` or
:meth:`RewardContract.make_prompts` when random pixels or generic prompts do not suit the reward,
and the class attributes to loosen tolerances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch

from dance.interfaces import Prompt, Reward

MODALITIES = ("image", "video")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" (no index) means the current device, which is where "cuda:0" tensors live by default.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class RewardContract:
    """Mixin of contract tests for a reward; subclasses provide the ``reward`` fixture."""

    batch_size: int = 3
    # Scoring a batch must equal scoring each sample alone within these tolerances.
    batch_atol: float = 1e-5
    batch_rtol: float = 0.0
    # Scoring the same input twice must agree within these (exactly, by default).
    repeat_atol: float = 0.0
    repeat_rtol: float = 0.0
    seed: int = 0

    # -- fixtures and hooks subclasses may override -----------------------------------------------

    @pytest.fixture
    def reward(self) -> Reward:
        raise NotImplementedError(
            f"{type(self).__name__} must define a `reward` fixture returning a Reward instance"
        )

    @pytest.fixture
    def media_shape(self) -> Mapping[str, tuple[int, ...]]:
        """Per-sample media shape by modality: ``(C, H, W)`` and ``(C, F, H, W)``."""
        return {"image": (3, 32, 32), "video": (3, 4, 32, 32)}

    def make_media(
        self, reward: Reward, modality: str, batch: int, shape: Sequence[int], seed: int
    ) -> torch.Tensor:
        """Valid media for ``reward``: uniform pixels in [0, 1] on the reward's device."""
        generator = torch.Generator().manual_seed(seed)
        media = torch.rand((batch, *shape), generator=generator, dtype=torch.float32)
        return media.to(reward.runtime.device)

    def make_prompts(self, batch: int) -> list[Prompt]:
        return [Prompt(f"a photo of object number {i}") for i in range(batch)]

    # -- helpers ----------------------------------------------------------------------------------

    def _modalities(self, reward: Reward) -> tuple[str, ...]:
        # What the instance accepts: a wrapping reward may accept less than its class declares.
        return tuple(m for m in type(reward).modalities if reward.accepts(m))

    def _inputs(
        self, reward: Reward, modality: str, media_shape: Mapping[str, tuple[int, ...]], seed: int
    ) -> tuple[torch.Tensor, list[Prompt]]:
        shape = tuple(media_shape[modality])
        layout = "(C, H, W)" if modality == "image" else "(C, F, H, W)"
        assert len(shape) == layout.count(",") + 1, (
            f"media_shape[{modality!r}] must be {layout}, got {shape}"
        )
        media = self.make_media(reward, modality, self.batch_size, shape, seed)
        return media, self.make_prompts(self.batch_size)

    def _check_output(
        self, reward: Reward, out: Any, batch: int, device: torch.device, where: str
    ) -> None:
        assert isinstance(out, dict), (
            f"{where}: score() must return a dict, got {type(out).__name__}"
        )
        assert list(out) == list(reward.components), (
            f"{where}: keys {list(out)} differ from reward.components {list(reward.components)} "
            "(same names, same order)"
        )
        allowed = [device, torch.device(reward.runtime.device)]
        for key, value in out.items():
            assert isinstance(value, torch.Tensor), (
                f"{where}: component {key!r} is a {type(value).__name__}, not a tensor"
            )
            assert value.dtype == torch.float32, f"{where}: component {key!r} is {value.dtype}"
            assert tuple(value.shape) == (batch,), (
                f"{where}: component {key!r} has shape {tuple(value.shape)}, expected ({batch},)"
            )
            assert any(_same_device(value.device, d) for d in allowed), (
                f"{where}: component {key!r} is on {value.device}, expected one of {allowed}"
            )

    def _same(
        self,
        a: Mapping[str, torch.Tensor],
        b: Mapping[str, torch.Tensor],
        atol: float,
        rtol: float,
        where: str,
    ) -> None:
        for key in a:
            torch.testing.assert_close(
                a[key].detach().cpu(),
                b[key].detach().cpu(),
                atol=atol,
                rtol=rtol,
                equal_nan=True,
                msg=lambda m, k=key: f"{where}: component {k!r} differs: {m}",
            )

    # -- the contract -----------------------------------------------------------------------------

    def test_declarations(self, reward: Reward) -> None:
        assert isinstance(reward, Reward), f"{type(reward).__name__} is not a dance Reward"
        assert isinstance(reward.name, str) and reward.name, "reward.name must be a non-empty str"
        assert dataclasses.is_dataclass(reward.config_class), "config_class must be a dataclass"
        components = tuple(reward.components)
        assert components, "reward.components must name at least one component"
        assert all(isinstance(c, str) and c for c in components), "component names must be str"
        assert len(set(components)) == len(components), f"duplicate components: {components}"
        declared = tuple(type(reward).modalities)
        assert set(declared) <= set(MODALITIES), f"unknown modalities in {declared}"
        assert self._modalities(reward), (
            f"the reward accepts none of its class's modalities {declared} (see accepts())"
        )
        for modality in set(MODALITIES) - set(declared):
            assert not reward.accepts(modality), (
                f"accepts({modality!r}) is True, but the class's modalities are {declared}"
            )
        assert type(reward).differentiable or not reward.is_differentiable(), (
            "is_differentiable() is True, but the class declares differentiable = False"
        )

    def test_output_contract(
        self, reward: Reward, media_shape: Mapping[str, tuple[int, ...]]
    ) -> None:
        for modality in self._modalities(reward):
            media, prompts = self._inputs(reward, modality, media_shape, self.seed)
            out = reward.score(media, prompts)
            self._check_output(reward, out, self.batch_size, media.device, modality)
            for key, value in out.items():
                assert torch.isfinite(value).all(), (
                    f"{modality}: component {key!r} is not finite for valid input: {value}"
                )

    def test_batch_invariance(
        self, reward: Reward, media_shape: Mapping[str, tuple[int, ...]]
    ) -> None:
        for modality in self._modalities(reward):
            media, prompts = self._inputs(reward, modality, media_shape, self.seed + 1)
            batched = reward.score(media, prompts)
            for i in range(media.shape[0]):
                alone = reward.score(media[i : i + 1].clone(), prompts[i : i + 1])
                self._check_output(reward, alone, 1, media.device, f"{modality}, sample {i} alone")
                row = {k: v[i : i + 1] for k, v in batched.items()}
                self._same(
                    row,
                    alone,
                    self.batch_atol,
                    self.batch_rtol,
                    f"{modality}, sample {i} in a batch vs alone",
                )

    def test_determinism(self, reward: Reward, media_shape: Mapping[str, tuple[int, ...]]) -> None:
        for modality in self._modalities(reward):
            media, prompts = self._inputs(reward, modality, media_shape, self.seed + 2)
            first = reward.score(media, prompts)
            second = reward.score(media.clone(), prompts)
            self._same(
                first,
                second,
                self.repeat_atol,
                self.repeat_rtol,
                f"{modality}, the same input scored twice",
            )

    def test_input_not_modified(
        self, reward: Reward, media_shape: Mapping[str, tuple[int, ...]]
    ) -> None:
        for modality in self._modalities(reward):
            media, prompts = self._inputs(reward, modality, media_shape, self.seed + 3)
            before = media.clone()
            reward.score(media, prompts)
            assert torch.equal(media, before), f"{modality}: score() modified its input in place"

    def test_gradients(self, reward: Reward, media_shape: Mapping[str, tuple[int, ...]]) -> None:
        for modality in self._modalities(reward):
            media, prompts = self._inputs(reward, modality, media_shape, self.seed + 4)
            media = media.requires_grad_(True)
            out = reward.score(media, prompts)
            if not reward.is_differentiable():
                for key, value in out.items():
                    assert not value.requires_grad, (
                        f"{modality}: component {key!r} requires grad but the reward is not "
                        "differentiable (score under torch.no_grad() or detach)"
                    )
                continue
            main = out[reward.components[0]]
            assert main.requires_grad, (
                f"{modality}: the reward is differentiable but its main component has no graph"
            )
            (grad,) = torch.autograd.grad(main.sum(), media)
            assert torch.isfinite(grad).all(), f"{modality}: non-finite gradient"
            assert grad.abs().sum() > 0, f"{modality}: the gradient is zero everywhere"
