"""MixGRPO-Flash's ODE steps after the SDE window (samplers/flow/dance_flow_samplers/flash.py):
a compressed tail schedule and the second-order multistep DPM-Solver++."""

from __future__ import annotations

import json
import math

import pytest
import torch

import dance
import dance.registry
from dance.cli.app import main
from dance.config import build
from dance.errors import ConfigError
from dance.interfaces import Schedule
from dance.sampling.generate import denoise
from dance.testing.sampler_contract import SamplerContract
from dance_flow_samplers import FlowSDESampler
from dance_flow_samplers.flash import dpm_solver_2m_mean

FLASH = {
    "num_steps": 12,
    "shift": 3.0,
    "sde_window_start": 0,
    "sde_window_size": 4,
    "ode_solver_after_window": "dpmsolver++2m",
    "ode_steps_after_window": 0.4,
}


def flash_sampler(**changes):
    config = build(FlowSDESampler.config_class, {**FLASH, **changes}, prefix="sampler.")
    return FlowSDESampler(config, dance.Runtime())


def shifted(u: float, shift: float = 3.0) -> float:
    return shift * u / (1 + (shift - 1) * u)


def test_compressed_schedule_by_hand():
    # N = 12, window on steps 0-3: the tail starts at level 4 (u = 8/12) and keeps
    # int(9 x 0.4) = 3 levels of the 9 (levels 4 ... 12), evenly in u: 8/12, 4/12, 0.
    levels = flash_sampler().schedule().levels.tolist()
    expected = [shifted(1 - k / 12) for k in range(4)] + [shifted(u) for u in (8 / 12, 4 / 12, 0)]
    assert levels == pytest.approx(expected, abs=1e-6)
    assert flash_sampler().schedule().num_steps == 6  # 4 window steps + 2 ODE steps, not 12
    # the window and the trained steps are unchanged
    sampler = flash_sampler()
    assert sampler.noisy_steps(sampler.schedule()).tolist() == [True] * 4 + [False] * 2
    # uncompressed: the full schedule
    assert flash_sampler(ode_steps_after_window=1.0).schedule().num_steps == 12


def exact_gaussian_flow(s: float, c: float) -> float:
    """x(s) / x(1) on the probability-flow ODE when the data are N(0, c^2): the marginal std."""
    return math.sqrt((1 - s) ** 2 * c**2 + s**2)


def gaussian_velocity(x: torch.Tensor, s: float, c: float) -> torch.Tensor:
    """The exact velocity E[eps - x0 | x_s] for data N(0, c^2) (a linear field)."""
    return x * (s - (1 - s) * c**2) / ((1 - s) ** 2 * c**2 + s**2)


def solve(levels: list[float], c: float, second_order: bool) -> float:
    x = torch.ones(1, dtype=torch.float64) * exact_gaussian_flow(levels[0], c)
    x0_prev = None
    for k in range(len(levels) - 1):
        s, s_next = levels[k], levels[k + 1]
        x0 = x - s * gaussian_velocity(x, s, c)
        if second_order and x0_prev is not None:
            t = [torch.tensor(v, dtype=torch.float64) for v in (levels[k - 1], s, s_next)]
            x = dpm_solver_2m_mean(x, x0, x0_prev, *t)
        else:
            x = x - (s - s_next) * gaussian_velocity(x, s, c)  # Euler (= DPM-Solver++ order 1)
        x0_prev = x0
    return float(x)


def test_dpm_solver_2m_converges_at_second_order_on_an_exact_flow():
    # Integrate the exact ODE from sigma 0.9 to 0.1; halving the step size divides the error by
    # about 4 for a second-order solver and by about 2 for Euler.
    c = 0.3
    exact = exact_gaussian_flow(0.1, c)
    errors = {}
    for second_order in (False, True):
        for n in (32, 64, 128):
            levels = [0.9 - 0.8 * k / n for k in range(n + 1)]
            errors[second_order, n] = abs(solve(levels, c, second_order) - exact)
    assert errors[True, 32] < errors[False, 32] / 10
    for n in (32, 64):  # past the pre-asymptotic range (measured: 3.6 and 3.9)
        assert 3.3 < errors[True, n] / errors[True, 2 * n] < 4.7, errors
        assert 1.7 < errors[False, n] / errors[False, 2 * n] < 2.3, errors


def test_one_step_against_the_time_form():
    # DPM-Solver++(2M) written with times instead of log-SNR (Lu et al. 2022, eq. for 2M with
    # alpha = 1 - s): x' = (s'/s) x + (alpha' - s' alpha / s) (x0 + (x0 - x0p) / (2 r)),
    # r = (lambda - lambda_p) / (lambda' - lambda), lambda = log(alpha / s).
    sp, s, sn = 0.8, 0.6, 0.35
    x, x0, x0p = 0.7, 0.2, 0.1
    lam = [math.log((1 - v) / v) for v in (sp, s, sn)]
    r = (lam[1] - lam[0]) / (lam[2] - lam[1])
    expected = (sn / s) * x + ((1 - sn) - sn * (1 - s) / s) * (x0 + (x0 - x0p) / (2 * r))
    got = dpm_solver_2m_mean(*(torch.tensor([v]) for v in (x, x0, x0p, sp, s, sn)))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # the last step (to sigma 0) is first order: the data prediction
    last = dpm_solver_2m_mean(*(torch.tensor([v]) for v in (x, x0, x0p, sp, s, 0.0)))
    assert float(last) == pytest.approx(x0)


def test_sampling_loop_passes_the_step_before_only_to_tail_steps():
    sampler = flash_sampler()
    schedule = sampler.schedule()
    assert sampler.uses_previous_step()

    class Linear:  # a velocity field that is not constant, so the solvers differ
        def predict(self, x, t, cond):
            return x * (1.5 - t.view(-1, *([1] * (x.ndim - 1))))

    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    outs = list(denoise(Linear(), sampler, schedule, x, {}, torch.Generator().manual_seed(1)))
    euler = flash_sampler(ode_solver_after_window="euler")
    again = list(denoise(Linear(), euler, schedule, x, {}, torch.Generator().manual_seed(1)))
    for k in range(4):  # the window's SDE steps are the same
        torch.testing.assert_close(outs[k].next_latents, again[k].next_latents)
    assert not torch.allclose(outs[4].next_latents, again[4].next_latents)  # 2M after it
    # a stored transition of a window step needs no history (training recomputes those alone)
    k = torch.full((2,), 2)
    stored = sampler.step(
        torch.ones_like(x), outs[1].next_latents, k, schedule, next_latents=outs[2].next_latents
    )
    assert torch.isfinite(stored.log_prob).all()


def test_flash_options_need_a_window():
    with pytest.raises(ConfigError, match="sde_window_size >= 1"):
        flash_sampler(sde_window_size=0)


def test_a_schedule_with_another_step_count_is_not_compressed():
    schedule = flash_sampler().schedule(num_steps=5)
    assert isinstance(schedule, Schedule) and schedule.num_steps == 5


class TestFlashSamplerContract(SamplerContract):
    @pytest.fixture
    def sampler(self):
        return flash_sampler()


def test_the_demo_trains_with_mixgrpo_flash(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dance.registry, "_REGISTRY", None)
    args = ["run", "--no-progress", "--output-dir", str(tmp_path), "trainer.iterations=2"]
    args += ["evaluation.prompts=", "sampler.sde_window_start=0", "sampler.sde_window_size=4"]
    args += ["sampler.ode_solver_after_window=dpmsolver++2m", "sampler.ode_steps_after_window=0.4"]
    args += ["sampler.sde_window_schedule=progressive", "sampler.sde_window_shift_interval=1"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 32 samples x the 4 window steps, then the window moved to steps 1-4
    assert [row["trained_pairs"] for row in rows] == [128.0, 128.0]
    assert all(math.isfinite(row["loss"]) for row in rows)
