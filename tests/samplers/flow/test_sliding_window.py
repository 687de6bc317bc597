"""MixGRPO's sliding SDE window (samplers/flow/dance_flow_samplers/window.py).

The reference below replays the published training loop's window state step by step, as
MixGRPO's ``GRPOTrainingStates.update_iteration`` does with ``sample_strategy='progressive'``,
``prog_overlap`` and ``roll_back`` (or without ``roll_back``): a counter within the group, a
current start that moves by the stride after ``iters_per_group`` iterations and restarts (or is
clipped) past ``sampling_steps - 2``. It keeps state; the sampler must give the same window from
the iteration number alone.
"""

from __future__ import annotations

import pytest
import torch

import dance
from dance.config import build, describe
from dance.errors import ConfigError
from dance.registry import load_registry
from dance.testing.sampler_contract import SamplerContract
from dance_flow_samplers import CPSSampler, DanceSDESampler, FlowSDESampler, SDEWindowSampler

STOCHASTIC = [DanceSDESampler, FlowSDESampler, CPSSampler]


def replay_mixgrpo(iterations, num_steps, start, size, interval, stride, roll_back):
    """The published loop's window at each iteration, with its state carried along."""
    max_start = num_steps - 2  # MixGRPO: max_timesteps = sampling_steps - 2
    current, in_group = start, 0
    windows = []
    for _ in range(iterations):
        # The loop reads the window, then updates the state for the next iteration. Its window
        # ends before max_timesteps; dance's before num_steps - 1 (see window.py).
        windows.append(list(range(current, min(current + size, num_steps - 1))))
        in_group += 1
        if in_group >= interval:
            in_group = 0
            current += stride
        if current > max_start:
            current = start if roll_back else max_start
            if roll_back:
                in_group = 0
    return windows


def sliding(cls, **options):
    values = {"sde_window_schedule": "progressive", "sde_window_size": 4, **options}
    return cls(build(cls.config_class, values), dance.Runtime())


def noisy(sampler) -> list[int]:
    return torch.nonzero(sampler.noisy_steps(sampler.schedule())).squeeze(1).tolist()


def test_published_defaults():
    fields = {f.name: f for f in describe(FlowSDESampler.config_class)}
    assert fields["sde_window_schedule"].default == "fixed"  # sliding is asked for
    assert fields["sde_window_shift_interval"].default == 25  # MixGRPO's tau
    assert fields["sde_window_stride"].default == 1  # MixGRPO's window stride
    assert fields["sde_window_at_end"].default == "restart"  # the published --roll_back
    assert all(f.help for f in fields.values())


@pytest.mark.parametrize(
    "num_steps, start, size, interval, stride, roll_back",
    [
        (25, 0, 4, 25, 1, True),  # MixGRPO's published run (FLUX, 25 steps)
        (25, 0, 4, 20, 1, True),  # MixGRPO-Flash's interval
        (12, 0, 4, 25, 1, True),  # the demo's 12 steps
        (12, 2, 3, 3, 2, True),  # a start that is not 0, a stride that skips the last start
        (12, 1, 4, 2, 3, False),  # held at the end: clipped to num_steps - 2
        (10, 3, 2, 5, 0, True),  # stride 0: MixGRPO-Flash*'s frozen window
    ],
)
def test_window_of_every_iteration_follows_the_published_schedule(
    num_steps, start, size, interval, stride, roll_back
):
    iterations = 2 * num_steps * interval + 7  # past two full cycles
    expected = replay_mixgrpo(iterations, num_steps, start, size, interval, stride, roll_back)
    sampler = sliding(
        FlowSDESampler,
        num_steps=num_steps,
        sde_window_start=start,
        sde_window_size=size,
        sde_window_shift_interval=interval,
        sde_window_stride=stride,
        sde_window_at_end="restart" if roll_back else "hold",
    )
    got = [noisy(sampler.for_iteration(it)) for it in range(iterations)]
    assert got == expected
    assert all(window for window in got)  # never an empty window


def test_published_run_on_25_steps_by_hand():
    sampler = sliding(FlowSDESampler, num_steps=25)
    assert noisy(sampler.for_iteration(0)) == [0, 1, 2, 3]
    assert noisy(sampler.for_iteration(24)) == [0, 1, 2, 3]
    assert noisy(sampler.for_iteration(25)) == [1, 2, 3, 4]
    assert noisy(sampler.for_iteration(299)) == [11, 12, 13, 14]  # MixGRPO's 300 iterations
    assert noisy(sampler.for_iteration(23 * 25)) == [23]  # the last start: N - 2
    assert noisy(sampler.for_iteration(24 * 25)) == [0, 1, 2, 3]  # restarted


@pytest.mark.parametrize("cls", STOCHASTIC)
def test_the_iterations_sampler_is_a_fixed_window_copy(cls):
    base = sliding(cls, num_steps=8, sde_window_size=2, sde_window_shift_interval=3)
    moved = base.for_iteration(7)  # two moves: steps 2 and 3
    assert type(moved) is cls and moved is not base
    assert moved.config.sde_window_schedule == "fixed"
    assert (moved.config.sde_window_start, moved.config.sde_window_size) == (2, 2)
    assert moved.for_iteration(100) is moved  # a fixed window does not move
    assert base.config.sde_window_start == 0  # the trainer's sampler is untouched
    assert noisy(base) == [0, 1]  # unmoved, it samples with its first window
    # Stepping: SDE inside [2, 3], Euler outside, the same as a sampler built fixed there.
    fixed = cls(
        build(cls.config_class, {"num_steps": 8, "sde_window_start": 2, "sde_window_size": 2}),
        dance.Runtime(),
    )
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(8, 4, 3, 5, generator=gen), torch.randn(8, 4, 3, 5, generator=gen)
    k = torch.arange(8)
    schedule = moved.schedule()
    a = moved.step(v, x, k, schedule, generator=torch.Generator().manual_seed(1))
    b = fixed.step(v, x, k, schedule, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.next_latents, b.next_latents) and torch.equal(a.log_prob, b.log_prob)
    assert (a.std.flatten() > 0).tolist() == [k in (2, 3) for k in range(8)]


def test_a_fixed_window_and_no_window_are_the_sampler_itself():
    for options in ({}, {"sde_window_start": 2, "sde_window_size": 3}):
        sampler = FlowSDESampler(build(FlowSDESampler.config_class, options), dance.Runtime())
        assert sampler.for_iteration(1234) is sampler
    ode = load_registry().create("sampler", "ode", {}, dance.Runtime())
    assert ode.for_iteration(5) is ode  # the interface's default


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sde_window_size": 0}, "sde_window_size >= 1"),
        ({"num_steps": 6, "sde_window_start": 5}, "at most on step num_steps - 2 = 4"),
        ({"sde_window_shift_interval": 0}, "at least 1"),
        ({"sde_window_stride": -1}, "at least 0"),
        ({"sde_window_at_end": "wrap"}, "must be one of"),
        ({"sde_window_schedule": "random"}, "must be one of"),
    ],
)
def test_bad_window_options_are_config_errors(bad, message):
    values = {"sde_window_schedule": "progressive", "sde_window_size": 4, **bad}
    with pytest.raises(ConfigError, match=message):
        build(FlowSDESampler.config_class, values)


def test_every_stochastic_flow_sampler_has_the_window():
    assert all(issubclass(cls, SDEWindowSampler) for cls in STOCHASTIC)


class TestSlidingSamplersContract(SamplerContract):
    """The shared contract holds for a sliding sampler, unmoved and moved to an iteration."""

    @pytest.fixture(params=["dance-sde", "flow-sde", "cps"])
    def sampler(self, request):
        options = {
            "num_steps": 5,
            "sde_window_schedule": "progressive",
            "sde_window_size": 2,
            "sde_window_shift_interval": 1,
        }
        base = load_registry().create("sampler", request.param, options, dance.Runtime())
        return base.for_iteration(2)  # steps 2 and 3
