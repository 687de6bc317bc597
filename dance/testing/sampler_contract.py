"""Contract tests every sampler plugin runs, built-in or third-party.

Subclass :class:`SamplerContract` in a test module and provide a ``sampler`` fixture::

    import pytest
    from dance.testing.sampler_contract import SamplerContract

    class TestMySampler(SamplerContract):
        @pytest.fixture
        def sampler(self):
            return MySampler(MySampler.config_class(num_steps=4), dance.Runtime())
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dance.interfaces import Sampler

LATENT_SHAPES = [(6, 8, 4), (6, 4, 3, 5), (6, 4, 2, 3, 5)]  # tokens, images, videos


class SamplerContract:
    @pytest.fixture
    def sampler(self) -> Sampler:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    def _inputs(self, shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    def test_declared_roles(self, sampler):
        # default_for / deterministic_for: only for prediction types the sampler handles; the
        # training default must be able to train, and the noise-free options must be its config's.
        cls = type(sampler)
        for kinds in (cls.default_for, cls.deterministic_for):
            assert set(kinds) <= set(cls.prediction_types), (kinds, cls.prediction_types)
        assert cls.stochastic or not cls.default_for, "a training default must be stochastic"
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        assert set(cls.deterministic_options) <= fields, cls.deterministic_options
        if cls.deterministic_for:
            cls.config_class(**cls.deterministic_options)

    def test_schedule_shapes(self, sampler):
        schedule = sampler.schedule()
        assert schedule.timesteps.ndim == 1 and schedule.num_steps >= 1
        assert schedule.levels.shape[0] == schedule.num_steps + 1
        assert torch.isfinite(schedule.timesteps).all() and torch.isfinite(schedule.levels).all()
        assert sampler.schedule(num_steps=3).num_steps == 3

    @pytest.mark.parametrize("shape", LATENT_SHAPES)
    def test_step_shapes_and_dtypes(self, sampler, shape):
        schedule = sampler.schedule()
        x, v = self._inputs(shape)
        k = torch.arange(shape[0]) % max(schedule.num_steps - 1, 1)
        out = sampler.step(v, x, k, schedule, generator=torch.Generator().manual_seed(0))
        for t in (out.next_latents, out.mean, out.x0):
            assert t.shape == x.shape and t.dtype == torch.float32
        assert out.log_prob.shape == (shape[0],) and out.log_prob.dtype == torch.float32
        assert torch.isfinite(out.log_prob).all()
        assert out.std.shape[0] == shape[0]

    def test_stored_transition_reproduces_log_prob(self, sampler):
        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[1])
        k = torch.zeros(x.shape[0], dtype=torch.long)
        drawn = sampler.step(v, x, k, schedule, generator=torch.Generator().manual_seed(1))
        again = sampler.step(v, x, k, schedule, next_latents=drawn.next_latents)
        torch.testing.assert_close(again.log_prob, drawn.log_prob, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again.next_latents, drawn.next_latents)

    def test_deterministic_takes_the_mean(self, sampler):
        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[0])
        k = torch.zeros(x.shape[0], dtype=torch.long)
        out = sampler.step(v, x, k, schedule, deterministic=True)
        torch.testing.assert_close(out.next_latents, out.mean)

    def test_same_generator_same_draw(self, sampler):
        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[0])
        k = torch.zeros(x.shape[0], dtype=torch.long)
        a = sampler.step(v, x, k, schedule, generator=torch.Generator().manual_seed(3))
        b = sampler.step(v, x, k, schedule, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a.next_latents, b.next_latents, atol=0, rtol=0)

    def test_per_sample_noise_is_the_samplers_own_gaussian(self, sampler):
        """The trainer draws each sample's noise from its own generator (the run then does not
        depend on how samples are batched or split over processes) through
        :func:`dance.sampling.generate.step_per_sample`: ``mean + std * z`` of the deterministic
        step, then the log-probability of that stored transition. That is the sampler's own draw."""
        from dance.sampling.generate import step_per_sample

        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[1])
        k = torch.arange(x.shape[0]) % schedule.num_steps
        gens = [torch.Generator().manual_seed(20 + i) for i in range(x.shape[0])]
        out = step_per_sample(sampler, v, x, k, schedule, gens)
        for i in range(x.shape[0]):
            alone = sampler.step(
                v[i : i + 1],
                x[i : i + 1],
                k[i : i + 1],
                schedule,
                generator=torch.Generator().manual_seed(20 + i),
            )
            torch.testing.assert_close(out.next_latents[i : i + 1], alone.next_latents)
            torch.testing.assert_close(out.log_prob[i : i + 1], alone.log_prob)

    def test_mixed_steps_equal_stepping_each_sample_alone(self, sampler):
        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[1])
        x_next, _ = self._inputs(LATENT_SHAPES[1], seed=5)
        k = torch.arange(x.shape[0]) % schedule.num_steps
        batched = sampler.step(v, x, k, schedule, next_latents=x_next)
        for i in range(x.shape[0]):
            one = sampler.step(
                v[i : i + 1], x[i : i + 1], k[i : i + 1], schedule, x_next[i : i + 1]
            )
            torch.testing.assert_close(one.log_prob, batched.log_prob[i : i + 1])
            torch.testing.assert_close(one.mean, batched.mean[i : i + 1])

    def test_log_prob_has_gradient_through_model_output(self, sampler):
        if not sampler.stochastic:
            pytest.skip("a deterministic sampler has no transition density to differentiate")
        schedule = sampler.schedule()
        x, v = self._inputs(LATENT_SHAPES[0])
        x_next, _ = self._inputs(LATENT_SHAPES[0], seed=9)
        v.requires_grad_(True)
        # The first step that draws noise (an SDE window may start later; its ODE steps have
        # no density).
        first = int(sampler.noisy_steps(schedule).nonzero()[0])
        k = torch.full((x.shape[0],), first, dtype=torch.long)
        sampler.step(v, x, k, schedule, next_latents=x_next).log_prob.sum().backward()
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
