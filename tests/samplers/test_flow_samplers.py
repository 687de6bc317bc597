"""Tests of the rectified-flow samplers (plugin distribution samplers/flow, `dance_flow_samplers`).

The reference formulas below are written independently, per sample and in float64, in the form the
published code uses (DanceGRPO's score form, Flow-GRPO's expanded form, CPS), not in the unified
form the plugin implements, so that an algebra slip in either shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from dance.config import ConfigError, build, describe
from dance.interfaces import Runtime, Sampler, Schedule, StepOutput
from dance_flow_samplers import (
    CPSSampler,
    DanceSDESampler,
    EulerODESampler,
    FlowSDESampler,
    shifted_sigmas,
)

STOCHASTIC = {"dance-sde": DanceSDESampler, "flow-sde": FlowSDESampler, "cps": CPSSampler}
ALL = {**STOCHASTIC, "ode": EulerODESampler}


def make(cls: type[Sampler], **options: object) -> Sampler:
    return cls(build(cls.config_class, options), Runtime())


# -- independent references (float64, one sample at a time) ----------------------------------------


def ref_dance(x, v, s, s_next, eta):
    """DanceGRPO's flux_step with sde_solver: Euler plus a score correction."""
    dsigma = s_next - s
    x0 = x - s * v
    score = -(x - x0 * (1 - s)) / s**2
    mean = x + dsigma * v - 0.5 * eta**2 * score * dsigma
    return mean, eta * math.sqrt(s - s_next)


def ref_flow(x, v, s, s_next, s1, a):
    """Flow-GRPO's sde_step_with_logprob (sde_type 'sde')."""
    dt = s_next - s
    g = a * math.sqrt(s / (1 - (s1 if s == 1 else s)))
    mean = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
    return mean, g * math.sqrt(-dt)


def ref_cps(x, v, s, s_next, a):
    """Flow-GRPO's sde_step_with_logprob (sde_type 'cps')."""
    std = s_next * math.sin(a * math.pi / 2)
    x0 = x - s * v
    x1 = x + v * (1 - s)
    return x0 * (1 - s_next) + x1 * math.sqrt(s_next**2 - std**2), std


def ref_euler(x, v, s, s_next):
    return x + (s_next - s) * v, 0.0


def reference(name, x, v, levels, step_index, noise):
    """Per-sample float64 means [B, *L] and stds [B] of sampler `name` with noise scale `noise`."""
    lv = [float(t) for t in levels.double()]
    means, stds = [], []
    for b, k in enumerate(step_index.tolist()):
        xb, vb, s, sn = x[b].double(), v[b].double(), lv[k], lv[k + 1]
        if name == "dance-sde":
            m, sd = ref_dance(xb, vb, s, sn, noise)
        elif name == "flow-sde":
            m, sd = ref_flow(xb, vb, s, sn, lv[1], noise)
        elif name == "cps":
            m, sd = ref_cps(xb, vb, s, sn, noise)
        else:
            m, sd = ref_euler(xb, vb, s, sn)
        means.append(m)
        stds.append(sd)
    return torch.stack(means), torch.tensor(stds, dtype=torch.float64)


def ref_log_prob(sample, mean, stds, reduction="mean"):
    """Gaussian log-density with torch.distributions, 0 where the std is 0."""
    out = []
    for b, sd in enumerate(stds.tolist()):
        if sd == 0:
            out.append(torch.tensor(0.0, dtype=torch.float64))
            continue
        lp = torch.distributions.Normal(mean[b], sd).log_prob(sample[b].double())
        out.append(lp.mean() if reduction == "mean" else lp.sum())
    return torch.stack(out)


NOISE = {"dance-sde": 0.3, "flow-sde": 0.7, "cps": 0.7, "ode": 0.0}
NOISE_FIELD = {"dance-sde": "eta", "flow-sde": "noise_level", "cps": "noise_level"}


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


# -- schedule --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 7, 16, 50])
@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 7.0])
def test_schedule_endpoints_and_strict_decrease(num_steps, shift):
    sigmas = shifted_sigmas(num_steps, shift)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[0].item() == 1.0
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_schedule_matches_shift_formula(shift):
    n = 10
    u = [1 - k / n for k in range(n + 1)]
    expected = torch.tensor([shift * t / (1 + (shift - 1) * t) for t in u], dtype=torch.float32)
    torch.testing.assert_close(shifted_sigmas(n, shift), expected, rtol=0, atol=1e-7)
    if shift == 1.0:
        torch.testing.assert_close(shifted_sigmas(n, shift), torch.linspace(1, 0, n + 1))
    else:  # the shift must actually move the interior sigmas
        assert not torch.allclose(shifted_sigmas(n, shift), torch.linspace(1, 0, n + 1))


@pytest.mark.parametrize("name", list(ALL))
def test_sampler_schedule(name):
    sampler = make(ALL[name], num_steps=6, shift=2.0)
    sched = sampler.schedule()
    assert isinstance(sched, Schedule)
    assert sched.num_steps == 6
    torch.testing.assert_close(sched.levels, shifted_sigmas(6, 2.0), rtol=0, atol=0)
    torch.testing.assert_close(sched.timesteps, sched.levels[:-1], rtol=0, atol=0)
    assert sched.timesteps.dtype == sched.levels.dtype == torch.float32
    assert sched.levels.device == torch.device("cpu")
    assert sampler.schedule(num_steps=3).levels.shape == (4,)
    with pytest.raises(ValueError):
        sampler.schedule(num_steps=0)


# -- the step against the published forms ----------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_matches_reference_mean_std_and_log_prob(name, reduction):
    options = {"num_steps": 8, "shift": 3.0}
    if name != "ode":
        options.update({NOISE_FIELD[name]: NOISE[name], "log_prob_reduction": reduction})
    sampler = make(ALL[name], **options)
    sched = sampler.schedule()
    step_index = torch.tensor([0, 1, 3, 5, 6, 7])
    x, v = inputs((6, 4, 3))
    ref_mean, ref_std = reference(name, x, v, sched.levels, step_index, NOISE[name])
    # Next latents drawn independently of the sampler, around the reference mean.
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    nxt = (ref_mean + ref_std.view(-1, 1, 1) * z).float()

    out = sampler.step(v, x, step_index, sched, next_latents=nxt)
    assert isinstance(out, StepOutput)
    torch.testing.assert_close(out.mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
    assert out.std.shape == (6, 1, 1)
    torch.testing.assert_close(out.std.double().flatten(), ref_std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.x0.double(),
        x.double() - sched.levels[step_index].double().view(-1, 1, 1) * v.double(),
        rtol=1e-6,
        atol=1e-6,
    )
    assert torch.equal(out.next_latents, nxt)
    if name == "ode":
        assert torch.equal(out.log_prob, torch.zeros(6))
    else:
        expected = ref_log_prob(nxt, ref_mean, ref_std, reduction)
        tol = 1e-4 if reduction == "mean" else 1e-3
        torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-4, atol=tol)
    assert out.log_prob.shape == (6,) and out.log_prob.dtype == torch.float32


def test_dance_sde_equals_danceGRPO_score_form_at_every_step():
    for eta in (0.25, 0.3, 1.0):
        sampler = make(DanceSDESampler, num_steps=5, shift=3.0, eta=eta)
        sched = sampler.schedule()
        x, v = inputs((5, 8))
        idx = torch.arange(5)
        ref_mean, ref_std = reference("dance-sde", x, v, sched.levels, idx, eta)
        out = sampler.step(v, x, idx, sched, deterministic=True)
        torch.testing.assert_close(out.mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.std.double().flatten(), ref_std, rtol=1e-6, atol=1e-7)


def test_flow_sde_equals_flow_grpo_form_and_uses_s1_at_sigma_one():
    a = 0.7
    sampler = make(FlowSDESampler, num_steps=5, shift=3.0, noise_level=a)
    sched = sampler.schedule()
    x, v = inputs((5, 8))
    idx = torch.arange(5)
    ref_mean, ref_std = reference("flow-sde", x, v, sched.levels, idx, a)
    out = sampler.step(v, x, idx, sched, deterministic=True)
    torch.testing.assert_close(out.mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.std.double().flatten(), ref_std, rtol=1e-5, atol=1e-7)
    # At s_0 = 1, g = a * sqrt(1 / (1 - s_1)) and D = 1 - s_1, so the std is exactly a.
    s1 = float(sched.levels[1])
    g0 = a * math.sqrt(1.0 / (1.0 - s1))
    assert out.std[0].item() == pytest.approx(g0 * math.sqrt(1.0 - s1), rel=1e-6)
    assert out.std[0].item() == pytest.approx(a, rel=1e-6)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.log_prob).all()


def test_cps_last_step_is_deterministic_without_nan():
    sampler = make(CPSSampler, num_steps=4, noise_level=0.7)
    sched = sampler.schedule()
    x, v = inputs((2, 3, 4))
    v.requires_grad_(True)
    idx = torch.tensor([3, 2])
    out = sampler.step(v, x, idx, sched, generator=torch.Generator().manual_seed(0))
    assert out.std[0].item() == 0.0 and out.std[1].item() > 0
    assert out.log_prob[0].item() == 0.0
    assert torch.isfinite(out.log_prob).all()
    # At s' = 0 the mean is the clean prediction, and no noise was added to it.
    torch.testing.assert_close(out.mean[0], out.x0[0])
    torch.testing.assert_close(out.next_latents[0], out.mean[0], rtol=0, atol=0)
    out.log_prob.sum().backward()
    assert torch.isfinite(v.grad).all()
    assert torch.equal(v.grad[0], torch.zeros_like(v.grad[0]))
    assert v.grad[1].abs().sum() > 0


# -- reductions, Euler limit, empirical moments ----------------------------------------------------


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_sum_reduction_is_mean_times_numel(name):
    x, v = inputs((3, 2, 5, 3))
    idx = torch.tensor([0, 2, 4])
    outs = {}
    for red in ("mean", "sum"):
        sampler = make(STOCHASTIC[name], num_steps=6, log_prob_reduction=red)
        outs[red] = sampler.step(
            v, x, idx, sampler.schedule(), generator=torch.Generator().manual_seed(3)
        )
    assert torch.equal(outs["mean"].next_latents, outs["sum"].next_latents)
    sum_lp, mean_lp = outs["sum"].log_prob, outs["mean"].log_prob
    torch.testing.assert_close(sum_lp, mean_lp * 30, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(sum_lp, mean_lp)


def test_zero_noise_is_exactly_the_euler_step_and_the_ode_sampler():
    x, v = inputs((4, 6, 2))
    idx = torch.tensor([0, 1, 2, 4])
    ode = make(EulerODESampler, num_steps=5)
    sched = ode.schedule()
    ode_out = ode.step(v, x, idx, sched, generator=torch.Generator().manual_seed(0))
    s = sched.levels[idx].view(-1, 1, 1)
    s_next = sched.levels[idx + 1].view(-1, 1, 1)
    euler = x - (s - s_next) * v
    assert torch.equal(ode_out.next_latents, euler)
    assert torch.equal(ode_out.mean, euler)
    assert torch.equal(ode_out.std, torch.zeros(4, 1, 1))
    assert torch.equal(ode_out.log_prob, torch.zeros(4))
    assert not EulerODESampler.stochastic and DanceSDESampler.stochastic

    for cls, field in ((DanceSDESampler, "eta"), (FlowSDESampler, "noise_level")):
        sde = make(cls, num_steps=5, **{field: 0.0})
        out = sde.step(v, x, idx, sched, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out.next_latents, euler), cls.name
        assert torch.equal(out.mean, ode_out.mean), cls.name
        assert torch.equal(out.log_prob, torch.zeros(4)), cls.name  # std 0: deterministic
    # CPS with no noise is DDIM on the flow path, which for flows is the Euler step too.
    cps = make(CPSSampler, num_steps=5, noise_level=0.0).step(v, x, idx, sched)
    torch.testing.assert_close(cps.next_latents, euler, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_empirical_moments_match_mean_and_std(name):
    n = 20000
    sampler = make(STOCHASTIC[name], num_steps=8)
    sched = sampler.schedule()
    x1, v1 = inputs((1, 6), seed=5)
    idx = torch.full((n,), 2)
    out = sampler.step(
        v1.expand(n, 6), x1.expand(n, 6), idx, sched, generator=torch.Generator().manual_seed(11)
    )
    std = out.std[0].item()
    assert std > 0.05
    emp_mean = out.next_latents.mean(0)
    assert (emp_mean - out.mean[0]).abs().max().item() < 5 * std / math.sqrt(n)
    emp_std = (out.next_latents - out.mean).std(0)
    torch.testing.assert_close(emp_std, torch.full((6,), std), rtol=0.03, atol=0)


# -- log-prob consistency, batching, shapes --------------------------------------------------------


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_log_prob_of_own_draw_is_reproduced(name):
    sampler = make(STOCHASTIC[name], num_steps=6)
    sched = sampler.schedule()
    x, v = inputs((4, 3, 8))
    idx = torch.tensor([0, 1, 3, 4])
    drawn = sampler.step(v, x, idx, sched, generator=torch.Generator().manual_seed(7))
    again = sampler.step(v, x, idx, sched, next_latents=drawn.next_latents)
    torch.testing.assert_close(again.log_prob, drawn.log_prob, rtol=0, atol=0)
    torch.testing.assert_close(again.mean, drawn.mean, rtol=0, atol=0)
    # A transition farther from the mean has a lower density.
    farther = drawn.mean + 1.5 * (drawn.next_latents - drawn.mean)
    other = sampler.step(v, x, idx, sched, next_latents=farther)
    assert (other.log_prob < drawn.log_prob).all()
    # The same generator seed draws the same noise; another seed does not.
    same = sampler.step(v, x, idx, sched, generator=torch.Generator().manual_seed(7))
    diff = sampler.step(v, x, idx, sched, generator=torch.Generator().manual_seed(8))
    assert torch.equal(same.next_latents, drawn.next_latents)
    assert not torch.equal(diff.next_latents, drawn.next_latents)


@pytest.mark.parametrize("name", list(ALL))
def test_mixed_step_batch_equals_each_sample_alone(name):
    sampler = make(ALL[name], num_steps=8)
    sched = sampler.schedule()
    x, v = inputs((4, 5, 6))
    nxt = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([0, 3, 5, 7])
    batch = sampler.step(v, x, idx, sched, next_latents=nxt)
    for b in range(4):
        alone = sampler.step(
            v[b : b + 1], x[b : b + 1], idx[b : b + 1], sched, next_latents=nxt[b : b + 1]
        )
        torch.testing.assert_close(batch.mean[b : b + 1], alone.mean, rtol=0, atol=0)
        torch.testing.assert_close(batch.std[b : b + 1], alone.std, rtol=0, atol=0)
        torch.testing.assert_close(batch.x0[b : b + 1], alone.x0, rtol=0, atol=0)
        torch.testing.assert_close(batch.log_prob[b : b + 1], alone.log_prob, rtol=1e-6, atol=1e-6)
    if name != "ode":  # the steps really differ, so a shared sigma would have been caught
        assert len(set(batch.std.flatten().tolist())) == 4


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("shape", [(3, 16, 8), (3, 4, 6, 6), (3, 4, 2, 4, 4)])
def test_latent_ranks(name, shape):
    sampler = make(ALL[name], num_steps=5)
    sched = sampler.schedule()
    x, v = inputs(shape)
    idx = torch.tensor([0, 2, 3])
    out = sampler.step(
        v.bfloat16(), x.bfloat16(), idx, sched, generator=torch.Generator().manual_seed(0)
    )
    for t in (out.next_latents, out.mean, out.x0):
        assert t.shape == shape and t.dtype == torch.float32
    assert out.std.shape == (3,) + (1,) * (len(shape) - 1)
    assert out.log_prob.shape == (3,) and out.log_prob.dtype == torch.float32
    assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.next_latents).all()
    ref_mean, ref_std = reference(
        name, x.bfloat16().float(), v.bfloat16().float(), sched.levels, idx, NOISE[name]
    )
    torch.testing.assert_close(out.mean.double(), ref_mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_deterministic_returns_the_mean_and_its_log_prob(name):
    sampler = make(STOCHASTIC[name], num_steps=6)
    sched = sampler.schedule()
    x, v = inputs((3, 10))
    idx = torch.tensor([0, 2, 4])
    out = sampler.step(v, x, idx, sched, deterministic=True)
    assert torch.equal(out.next_latents, out.mean)
    std = out.std.flatten().double()
    expected = -(std.log() + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_gradients_flow_to_the_model_output_only(name):
    sampler = make(STOCHASTIC[name], num_steps=6)
    sched = sampler.schedule()
    x, v = inputs((2, 4, 3))
    v.requires_grad_(True)
    nxt = (x + 0.1).requires_grad_(True)
    out = sampler.step(v, x, torch.tensor([1, 3]), sched, next_latents=nxt)
    out.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert nxt.grad is None


# -- config and registration -----------------------------------------------------------------------


def test_config_fields_defaults_and_validation():
    fields = {name: {f.name: f for f in describe(cls.config_class)} for name, cls in ALL.items()}
    window = [
        "num_steps",
        "shift",
        "log_prob_reduction",
        "sde_window_start",
        "sde_window_size",
        "sde_window_schedule",
        "sde_window_shift_interval",
        "sde_window_stride",
        "sde_window_at_end",
        "ode_solver_after_window",
        "ode_steps_after_window",
    ]
    assert list(fields["dance-sde"]) == [*window, "eta"]
    assert list(fields["flow-sde"]) == [*window, "noise_level"]
    assert list(fields["cps"]) == [*window, "noise_level"]
    assert list(fields["ode"]) == ["num_steps", "shift"]
    assert fields["dance-sde"]["eta"].default == 0.3
    assert fields["flow-sde"]["noise_level"].default == 0.7
    assert fields["cps"]["noise_level"].default == 0.7
    assert fields["ode"]["num_steps"].default == 16 and fields["ode"]["shift"].default == 3.0
    assert fields["cps"]["log_prob_reduction"].default == "mean"
    assert all(f.help for per in fields.values() for f in per.values())
    for cls, bad in [
        (DanceSDESampler, {"eta": -0.1}),
        (FlowSDESampler, {"noise_level": -1.0}),
        (CPSSampler, {"noise_level": 1.5}),
        (DanceSDESampler, {"log_prob_reduction": "max"}),
        (EulerODESampler, {"num_steps": 0}),
        (EulerODESampler, {"shift": 0.0}),
        (FlowSDESampler, {"sde_window_start": 16, "sde_window_size": 2}),
        (FlowSDESampler, {"sde_window_size": -1}),
    ]:
        with pytest.raises(ConfigError):
            build(cls.config_class, bad)
    for name, cls in ALL.items():
        assert cls.name == name
        assert cls.prediction_types == ("flow",)
        assert cls.stochastic is (name != "ode")


def test_plugin_registers_all_four_through_entry_points():
    from dance.registry import load_registry

    registry = load_registry()
    plugin = registry.plugins.get("flow-samplers")
    assert plugin is not None, "run: pip install --no-deps -e samplers/flow"
    assert plugin.loaded, plugin.error
    assert plugin.distribution == "dance-flow-samplers"
    assert sorted(plugin.components) == sorted(("sampler", n) for n in ALL)
    for name, cls in ALL.items():
        assert registry.get("sampler", name) is cls
    sampler = registry.create("sampler", "dance-sde", {"eta": 0.25}, Runtime())
    assert isinstance(sampler, DanceSDESampler) and sampler.config.eta == 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(ALL))
def test_cuda_step_has_no_host_sync_and_matches_cpu(name):
    device = torch.device("cuda")
    sampler = make(ALL[name], num_steps=6)
    sched = sampler.schedule(device=device)
    x, v = inputs((4, 4, 8, 8))
    idx = torch.tensor([0, 1, 3, 5])
    nxt = x + 0.1
    cpu = sampler.step(v, x, idx, sampler.schedule(device=torch.device("cpu")), next_latents=nxt)
    xd, vd, idxd, nxtd = x.to(device), v.to(device), idx.to(device), nxt.to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        drawn = sampler.step(vd, xd, idxd, sched, generator=torch.Generator(device).manual_seed(0))
        out = sampler.step(vd, xd, idxd, sched, next_latents=nxtd)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert drawn.next_latents.device.type == "cuda" and drawn.log_prob.device.type == "cuda"
    torch.testing.assert_close(out.mean.cpu(), cpu.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.log_prob.cpu(), cpu.log_prob, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [DanceSDESampler, FlowSDESampler, CPSSampler])
def test_sde_window_draws_noise_only_inside(cls):
    """MixGRPO / Flow-GRPO-Fast: steps 2 and 3 of 6 are SDE steps, the others Euler ODE steps
    (std 0, log-prob 0, no noise drawn) that are not offered for training."""
    windowed = cls(
        build(cls.config_class, {"num_steps": 6, "sde_window_start": 2, "sde_window_size": 2}),
        Runtime(),
    )
    full = cls(build(cls.config_class, {"num_steps": 6}), Runtime())
    ode = EulerODESampler(build(EulerODESampler.config_class, {"num_steps": 6}), Runtime())
    schedule = windowed.schedule()
    assert windowed.noisy_steps(schedule).tolist() == [False, False, True, True, False, False]
    assert full.noisy_steps(schedule).all() and not ode.noisy_steps(schedule).any()
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(6, 4, 3, 5, generator=gen), torch.randn(6, 4, 3, 5, generator=gen)
    k = torch.arange(6)  # one sample per step
    out = windowed.step(v, x, k, schedule, generator=torch.Generator().manual_seed(1))
    reference = full.step(v, x, k, schedule, generator=torch.Generator().manual_seed(1))
    euler = ode.step(v, x, k, schedule)
    inside = torch.tensor([False, False, True, True, False, False])
    torch.testing.assert_close(out.next_latents[~inside], euler.next_latents[~inside])
    assert (out.log_prob[~inside] == 0).all() and (out.std[~inside] == 0).all()
    torch.testing.assert_close(out.mean[inside], reference.mean[inside])
    torch.testing.assert_close(out.std[inside], reference.std[inside])
    assert (out.std[inside] > 0).all() and (out.log_prob[inside] != 0).all()
