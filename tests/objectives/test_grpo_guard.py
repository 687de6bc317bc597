"""GRPO-Guard's options of the `grpo` objective (arXiv 2510.22319): RatioNorm and the gradient
reweighting, checked against closed forms derived here independently of the implementation."""

from __future__ import annotations

import json
import math

import pytest
import torch

import dance
from dance.cli.app import main
from dance.cli.recipe import resolve
from dance.errors import ConfigError
from dance.interfaces import Schedule
from dance.objectives.grpo import GRPOConfig, GRPOObjective
from dance.objectives.guard import normalized_log_ratio, step_weights
from dance.registry import load_registry, reset_registry
from dance.testing import toy_policy
from dance.training.trainer import Trainer

NUM_STEPS, SHIFT = 6, 3.0


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str):
    """Elementwise normal log-density from torch.distributions, reduced over non-batch dims."""
    dens = torch.distributions.Normal(mean.double(), std.double()).log_prob(x.double())
    dens = dens.flatten(1)
    return dens.mean(dim=1) if reduction == "mean" else dens.sum(dim=1)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ratio_norm_is_the_noise_projection_of_the_mean_drift(reduction):
    # x' = mu_old + s * eps gives log r = <eps, dmu> / s - ||dmu||^2 / (2 s^2), so RatioNorm's
    # s * (log r + ||dmu||^2 / (2 s^2)) is <eps, dmu> (reduced like the log-density).
    g = torch.Generator().manual_seed(0)
    old_mean = torch.randn(4, 3, 2, 2, generator=g)
    new_mean = old_mean + 0.05 * torch.randn(4, 3, 2, 2, generator=g)
    std = torch.tensor([0.7, 0.3, 0.05, 0.0]).view(4, 1, 1, 1)
    eps = torch.randn(4, 3, 2, 2, generator=g)
    x_next = old_mean + std * eps
    live = slice(0, 3)  # the fourth pair has std 0: a deterministic step, no density
    new_lp = torch.zeros(4, dtype=torch.float64)
    old_lp = torch.zeros(4, dtype=torch.float64)
    new_lp[live] = _gaussian_log_prob(x_next[live], new_mean[live], std[live], reduction)
    old_lp[live] = _gaussian_log_prob(x_next[live], old_mean[live], std[live], reduction)

    got = normalized_log_ratio(new_lp, old_lp, new_mean, old_mean, std, reduction)

    proj = (eps * (new_mean - old_mean)).flatten(1)
    want = proj.mean(dim=1) if reduction == "mean" else proj.sum(dim=1)
    want[3] = 0.0
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6)
    # The raw log-ratio is what RatioNorm corrects: it differs (it carries the -||dmu||^2 / 2s^2
    # shift and the 1 / s scale).
    assert not torch.allclose((new_lp - old_lp)[live], want[live].double(), atol=1e-3)


def test_ratio_norm_centres_a_left_shifted_ratio_at_every_step():
    # Many draws of the same transitions at three noise levels: the raw log-ratio's mean is
    # -||dmu||^2 / (2 s^2) < 0 and its spread ~ 1 / s; after RatioNorm the mean is ~0 and the
    # spread no longer depends on s.
    g = torch.Generator().manual_seed(1)
    n, d = 4000, 16
    dmu = 0.02 * torch.randn(1, d, generator=g)
    old_mean, new_mean = torch.zeros(n, d), dmu.expand(n, d)
    raw_means, raw_stds, norm_means, norm_stds = [], [], [], []
    for s in (0.8, 0.2, 0.05):
        std = torch.full((n, 1), s)
        x_next = old_mean + std * torch.randn(n, d, generator=g)
        new_lp = _gaussian_log_prob(x_next, new_mean, std, "mean").float()
        old_lp = _gaussian_log_prob(x_next, old_mean, std, "mean").float()
        raw = new_lp - old_lp
        norm = normalized_log_ratio(new_lp, old_lp, new_mean, old_mean, std)
        bias = dmu.square().mean().item() / (2 * s * s)
        assert raw.mean().item() == pytest.approx(-bias, rel=0.2)
        raw_means.append(raw.mean().item())
        raw_stds.append(raw.std().item())
        norm_means.append(norm.mean().item())
        norm_stds.append(norm.std().item())
    assert max(raw_stds) / min(raw_stds) > 10  # the raw spread scales with 1 / s
    assert max(norm_stds) / min(norm_stds) < 1.2  # RatioNorm's does not
    assert all(m < 0 for m in raw_means)
    assert all(abs(m) < 4 * sd / math.sqrt(n) for m, sd in zip(norm_means, norm_stds, strict=True))


def _sigmas(num_steps: int, shift: float) -> list[float]:
    """DESIGN.md's shifted flow schedule: u_k = 1 - k/N, s_k = shift u / (1 + (shift - 1) u)."""
    us = [1 - k / num_steps for k in range(num_steps + 1)]
    return [shift * u / (1 + (shift - 1) * u) for u in us]


def test_gradient_reweighting_is_one_over_dt_of_the_flow_schedule(registry):
    sampler_cls = registry.get("sampler", "flow-sde")
    sampler = sampler_cls(
        sampler_cls.config_class(num_steps=NUM_STEPS, shift=SHIFT), dance.Runtime()
    )
    schedule = sampler.schedule(device=torch.device("cpu"))
    steps = torch.tensor([0, 2, 5, 2])
    sig = _sigmas(NUM_STEPS, SHIFT)
    want = torch.tensor([1 / (sig[k] - sig[k + 1]) for k in steps.tolist()])
    torch.testing.assert_close(step_weights(schedule, steps), want, rtol=1e-5, atol=0)
    # A made-up table: the weights read the given sigmas, not a built-in schedule.
    table = Schedule(timesteps=torch.zeros(3), levels=torch.tensor([1.0, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(
        step_weights(table, torch.tensor([0, 1, 2])), torch.tensor([2.0, 4, 4])
    )


# ---- in the trainer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def _trainer(registry, tmp_path, **objective):
    raw = {
        "objective": {"clip_range": 0.05, **objective},
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": NUM_STEPS, "shift": SHIFT},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "trainer": {
            "iterations": 1,
            "prompts_per_iteration": 2,
            "group_size": 4,
            "learning_rate": 5e-2,
            "micro_batch_size": 6,
            "gradient_accumulation_steps": 3,
            "sample_every": 0,
            "checkpoint_every": 0,
        },
    }
    return Trainer(resolve(raw, registry), tmp_path, dance.Runtime(), registry)


def _spy_losses(trainer, expected=None):
    """Record each micro-batch's loss (and, with ``expected``, the value it computes)."""
    objective = trainer.objective
    loss, begin = objective.loss, objective.begin_update
    seen: dict[str, list] = {"loss": [], "want": [], "windows": []}
    old_means: dict[tuple[int, int], torch.Tensor] = {}

    def spy_begin(rollout, batches):
        # The old policy's means of every micro-batch, before any weight changes.
        with torch.no_grad():
            for step_batches in batches:
                for b in step_batches:
                    old_means[b.window, b.index] = objective.transition(rollout, b.rows, b.units)
        return begin(rollout, batches)

    def spy_loss(rollout, batch):
        out = loss(rollout, batch)
        seen["loss"].append(out.detach().clone())
        seen["windows"].append(batch.window)
        if expected is not None:
            seen["want"].append(expected(rollout, batch, old_means[batch.window, batch.index]))
        return out

    objective.begin_update, objective.loss = spy_begin, spy_loss
    return seen


def test_options_off_give_todays_loss(registry, tmp_path):
    default = _trainer(registry, tmp_path / "a")
    explicit = _trainer(registry, tmp_path / "b", ratio_norm=False, gradient_reweight=False)
    guarded = _trainer(registry, tmp_path / "c", ratio_norm=True, gradient_reweight=True)
    runs = []
    for trainer in (default, explicit, guarded):
        seen = _spy_losses(trainer)
        metrics = trainer.iteration(0)
        runs.append(
            (torch.cat(seen["loss"]), metrics, [p.detach().clone() for p in trainer.params])
        )
    (l1, m1, w1), (l2, m2, w2), (l3, _, w3) = runs
    assert torch.equal(l1, l2) and m1["loss"] == m2["loss"]
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    # The options do change the update (so the comparison above can fail).
    assert not torch.allclose(l1, l3)
    assert not all(torch.equal(a, b) for a, b in zip(w1, w3, strict=True))


@pytest.mark.parametrize("old_log_probs", ["recompute", "rollout"])
@pytest.mark.parametrize(
    "ratio_norm, reweight", [(False, False), (True, False), (False, True), (True, True)]
)
def test_loss_matches_its_closed_form(registry, tmp_path, old_log_probs, ratio_norm, reweight):
    # Today's ratio exp(log p - log p_old) from torch.distributions' densities, or RatioNorm's
    # exp(mean_e(eps * dmu)) with eps = (x' - mu_old) / s (no log-density at all); times 1 / dt of
    # the step with the reweighting; the PPO clip as usual.
    trainer = _trainer(
        registry,
        tmp_path,
        ratio_norm=ratio_norm,
        gradient_reweight=reweight,
        old_log_probs=old_log_probs,
    )
    clip = trainer.objective.config.clip_range
    sig = _sigmas(NUM_STEPS, SHIFT)

    def expected(rollout, batch, old):
        with torch.no_grad():
            new = trainer.objective.transition(rollout, batch.rows, batch.units)
        x_next = rollout.trajectory[batch.rows, batch.units + 1].double()
        s = old.std.double()
        if ratio_norm:
            eps = (x_next - old.mean.double()) / s
            log_ratio = (eps * (new.mean.double() - old.mean.double())).flatten(1).mean(1)
        else:
            new_lp = _gaussian_log_prob(x_next, new.mean, new.std, "mean")
            if old_log_probs == "rollout":
                old_lp = rollout.log_probs[batch.rows, batch.units].double()
            else:
                old_lp = _gaussian_log_prob(x_next, old.mean, old.std, "mean")
            log_ratio = new_lp - old_lp
        ratio = torch.exp(log_ratio)
        a = batch.advantages.double()
        per_pair = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))
        if reweight:
            dt = torch.tensor([sig[k] - sig[k + 1] for k in batch.units.tolist()])
            per_pair = per_pair / dt.double()
        return per_pair

    seen = _spy_losses(trainer, expected)
    metrics = trainer.iteration(0)
    assert max(seen["windows"]) >= 1  # later optimizer steps, where the ratio moves off 1
    for got, want in zip(seen["loss"], seen["want"], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert metrics["ratio/first_step_max_dev"] < 1e-6
    assert metrics["ratio/max"] > 1  # the policy moved, and the ratio with it


def test_gradient_reweighting_needs_a_flow_sampler(registry):
    ddim = registry.get("sampler", "ddim")
    GRPOObjective.check_sampler(GRPOConfig(), ddim, ddim.config_class())  # off: accepted
    with pytest.raises(ConfigError, match="objective.gradient_reweight"):
        GRPOObjective.check_sampler(GRPOConfig(gradient_reweight=True), ddim, ddim.config_class())


# ---- the demo, end to end ------------------------------------------------------------------


@pytest.mark.slow
def test_demo_trains_with_grpo_guard_through_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "--no-progress", "--output-dir", str(run_dir), "trainer.iterations=2"]
    args += ["objective.ratio_norm=true", "objective.gradient_reweight=true"]
    # a held-out set of 24 images (one seed) instead of 96 keeps the end-to-end check cheap
    args += ["evaluation.seeds=1"]
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(args)
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["loss"]) and row["ratio/first_step_max_dev"] < 1e-5
    assert rows[-1]["ratio/max"] != 1.0  # the second optimizer step sees a moved policy
    config = (run_dir / "config.toml").read_text()
    assert "ratio_norm = true" in config and "gradient_reweight = true" in config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 2
    assert 0 <= summary["eval_after"]["success_rate"] <= 1  # held-out evaluation after training
