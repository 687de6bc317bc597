"""The DDIM sampler against diffusers' DDIMScheduler and against the closed form in float64."""

from __future__ import annotations

import math

import pytest
import torch

from dance.config import build
from dance.errors import ConfigError
from dance.interfaces import Runtime
from dance_ddim_sampler import DDIMConfig, DDIMSampler

SHAPE = (3, 4, 6, 5)  # [B, C, h, w]


def make_sampler(**values) -> DDIMSampler:
    return DDIMSampler(build(DDIMConfig, values, prefix="sampler."), Runtime())


def diffusers_scheduler(num_steps: int, **overrides):
    """DDIMScheduler configured as Stable Diffusion 1.x's scheduler_config.json."""
    from diffusers import DDIMScheduler

    config = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "prediction_type": "epsilon",
        **overrides,
    }
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)


def closed_form_abar(t: int, t_prev: int | None) -> tuple[float, float]:
    """abar_t and abar_prev in float64 from SD's betas: beta_i = (sqrt(b0) + i/(T-1) *
    (sqrt(b1) - sqrt(b0)))^2, abar_t = prod_{i<=t} (1 - beta_i); no previous timestep -> abar_0."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)

    def abar(n: int) -> float:
        return math.prod(1.0 - (lo + i / 999 * (hi - lo)) ** 2 for i in range(n + 1))

    return abar(t), abar(0 if t_prev is None else t_prev)


@pytest.mark.parametrize(
    ("num_steps", "overrides"),
    [(50, {}), (4, {}), (1, {}), (10, {"timestep_spacing": "trailing"}), (7, {"steps_offset": 0})],
)
def test_schedule_matches_diffusers(num_steps, overrides):
    scheduler = diffusers_scheduler(num_steps, **overrides)
    schedule = make_sampler(num_steps=num_steps, **overrides).schedule()
    assert schedule.timesteps.dtype == torch.int64
    torch.testing.assert_close(schedule.timesteps, scheduler.timesteps, atol=0, rtol=0)
    # levels[k] is abar at timestep k; levels[N] the "previous" alpha of the last step.
    expected = torch.cat(
        [scheduler.alphas_cumprod[scheduler.timesteps], scheduler.alphas_cumprod[:1]]
    )
    torch.testing.assert_close(schedule.levels, expected, atol=0, rtol=0)


def test_stable_diffusion_timesteps_are_981_down_to_1():
    timesteps = make_sampler().schedule().timesteps
    assert timesteps.shape == (50,)
    assert timesteps[0].item() == 981 and timesteps[-1].item() == 1
    assert (timesteps[:-1] - timesteps[1:] == 20).all()


@pytest.mark.parametrize("clip_sample", [False, True])
def test_eta_zero_mean_equals_ddim_scheduler_step(clip_sample):
    num_steps = 10
    scheduler = diffusers_scheduler(num_steps, clip_sample=clip_sample)
    sampler = make_sampler(num_steps=num_steps, eta=0.0, clip_sample=clip_sample)
    schedule = sampler.schedule()
    x, eps = inputs()
    x = x * 3  # clean predictions beyond +-1 at low noise, so that clipping matters
    for k in (0, 1, 5, num_steps - 1):  # first, second, middle and last step
        index = torch.full((SHAPE[0],), k)
        out = sampler.step(eps, x, index, schedule, deterministic=True)
        ref = scheduler.step(eps, scheduler.timesteps[k], x, eta=0.0)
        torch.testing.assert_close(out.next_latents, ref.prev_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.mean, ref.prev_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.x0, ref.pred_original_sample, atol=1e-5, rtol=1e-5)
        assert (out.std == 0).all() and (out.log_prob == 0).all()


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_noisy_step_equals_ddim_scheduler_with_the_same_noise(eta):
    num_steps = 8
    scheduler = diffusers_scheduler(num_steps)
    sampler = make_sampler(num_steps=num_steps, eta=eta)
    schedule = sampler.schedule()
    x, eps = inputs(1)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for k in (0, 3, num_steps - 1):
        out = sampler.step(eps, x, torch.full((SHAPE[0],), k), schedule, deterministic=True)
        ref = scheduler.step(eps, scheduler.timesteps[k], x, eta=eta, variance_noise=z)
        torch.testing.assert_close(out.mean + out.std * z, ref.prev_sample, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [0, 24, 49])
def test_mean_and_std_equal_the_closed_form(k):
    """DDIM eq. 12 and 16 evaluated in float64 from the betas, independent of both
    implementations; k = 49 is the last step, whose previous alpha is abar_0."""
    sampler = make_sampler(eta=1.0)
    schedule = sampler.schedule()
    t = int(schedule.timesteps[k])
    t_prev = int(schedule.timesteps[k + 1]) if k + 1 < 50 else None
    a_t, a_prev = closed_form_abar(t, t_prev)
    x, eps = inputs(3)
    out = sampler.step(eps, x, torch.full((SHAPE[0],), k), schedule, deterministic=True)

    std = math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    x64, e64 = x.double(), eps.double()
    x0 = (x64 - math.sqrt(1 - a_t) * e64) / math.sqrt(a_t)
    mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std**2) * e64
    assert out.std.shape == (SHAPE[0], 1, 1, 1)
    torch.testing.assert_close(
        out.std.double().flatten(), torch.full((3,), std, dtype=torch.float64), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(out.x0.double(), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean.double(), mean, rtol=1e-4, atol=1e-4)
    if k == 49:
        # SD 1.x's last step still has noise: abar_prev = abar_0 = 1 - beta_0 < 1.
        assert a_prev == pytest.approx(1 - 0.00085) and std > 0


def test_last_step_with_alpha_one_is_deterministic_and_returns_x0():
    sampler = make_sampler(num_steps=6, set_alpha_to_one=True)
    schedule = sampler.schedule()
    assert schedule.levels[-1].item() == 1.0
    x, eps = inputs(4)
    out = sampler.step(eps, x, torch.full((SHAPE[0],), 5), schedule, generator=torch.Generator())
    assert (out.std == 0).all() and (out.log_prob == 0).all()
    torch.testing.assert_close(out.next_latents, out.x0)


def test_first_step_std_is_nearly_the_full_noise():
    """At t = 981, abar_t ~ 0.005: one step of eta = 1 DDIM redraws most of the noise."""
    sampler = make_sampler()
    schedule = sampler.schedule()
    x, eps = inputs(5)
    out = sampler.step(
        eps, x, torch.zeros(SHAPE[0], dtype=torch.long), schedule, deterministic=True
    )
    a_t, a_prev = closed_form_abar(981, 961)
    assert a_t < 0.01
    expected = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    assert out.std.flatten()[0].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_is_the_gaussian_density(reduction):
    sampler = make_sampler(num_steps=10, log_prob_reduction=reduction)
    schedule = sampler.schedule()
    x, eps = inputs(6)
    k = torch.tensor([0, 4, 9])  # mixed steps in one batch
    out = sampler.step(eps, x, k, schedule, generator=torch.Generator().manual_seed(0))
    dist = torch.distributions.Normal(out.mean.double(), out.std.double().expand(SHAPE))
    per_element = dist.log_prob(out.next_latents.double()).flatten(1)
    expected = per_element.mean(1) if reduction == "mean" else per_element.sum(1)
    torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-5, atol=1e-4)


def test_draw_has_the_step_std():
    sampler = make_sampler(num_steps=10)
    schedule = sampler.schedule()
    x = torch.zeros(2, 4, 32, 32)
    out = sampler.step(
        torch.zeros_like(x),
        x,
        torch.tensor([2, 2]),
        schedule,
        generator=torch.Generator().manual_seed(0),
    )
    residual = (out.next_latents - out.mean) / out.std
    assert abs(residual.std().item() - 1.0) < 0.05 and abs(residual.mean().item()) < 0.05


def test_stored_transition_is_not_redrawn_and_ignores_deterministic():
    sampler = make_sampler(num_steps=4)
    schedule = sampler.schedule()
    x, eps = inputs(7)
    stored, _ = inputs(8)
    out = sampler.step(
        eps, x, torch.tensor([0, 1, 2]), schedule, next_latents=stored, deterministic=True
    )
    torch.testing.assert_close(out.next_latents, stored, atol=0, rtol=0)
    assert (out.log_prob < 0).all()


def test_bf16_inputs_are_stepped_in_fp32():
    sampler = make_sampler(num_steps=4)
    schedule = sampler.schedule()
    x, eps = inputs(9)
    out = sampler.step(
        eps.bfloat16(), x.bfloat16(), torch.tensor([1, 1, 1]), schedule, deterministic=True
    )
    ref = sampler.step(
        eps.bfloat16().float(),
        x.bfloat16().float(),
        torch.tensor([1, 1, 1]),
        schedule,
        deterministic=True,
    )
    assert out.mean.dtype == torch.float32 and out.log_prob.dtype == torch.float32
    torch.testing.assert_close(out.mean, ref.mean, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_steps": 1000}, "outside 0..999"),
        ({"num_steps": 2000}, "cannot exceed"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "beta_end"),
        ({"eta": 1.5}, "eta must be at most 1"),
        ({"timestep_spacing": "linspace"}, "timestep_spacing must be one of"),
    ],
)
def test_bad_config_is_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        make_sampler(**values).schedule()


def test_registered_for_epsilon_policies():
    from dance.registry import load_registry

    registry = load_registry()
    cls = registry.get("sampler", "ddim")
    assert cls is DDIMSampler and cls.prediction_types == ("epsilon",)
    assert registry.default_sampler("epsilon") == "ddim"
    assert registry.deterministic_sampler("epsilon") == ("ddim", {"eta": 0.0})
