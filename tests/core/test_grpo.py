"""The GRPO loop on the toy policy: layouts, update, checkpoints, failures."""

import json
import math
import os
import signal
import sys
import types
from dataclasses import dataclass

import pytest
import torch

import dance
from dance.cli.recipe import MOVED_TO_OBJECTIVE, resolve
from dance.config import option
from dance.errors import RewardError
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.training.trainer import Trainer


@dataclass
class _FlakyCfg:
    mode: str = option("nan", "what goes wrong: nan, raise, interrupt")


class _Flaky(dance.Reward):
    """Brightness, except sample 0 is NaN ('nan'), or scoring raises, or it sends Ctrl-C."""

    name = "flaky"
    config_class = _FlakyCfg
    components = ("value",)

    def score(self, media, prompts):
        value = media.flatten(1).mean(dim=1)
        if self.config.mode == "nan":
            value[0] = float("nan")
        elif self.config.mode == "raise":
            raise RuntimeError("reward server down")
        elif self.config.mode == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        return {"value": value}


_flaky_plugin = types.SimpleNamespace(
    register_rewards=dance.hookimpl(lambda register: register(_Flaky))
)


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy, "flaky": _flaky_plugin})


def make_trainer(registry, tmp_path, trainer=None, rewards=None, sampler=None, evaluation=None):
    # GRPO's own settings go to [objective], the rest to [trainer].
    trainer = dict(trainer or {})
    objective = {k: trainer.pop(k) for k in MOVED_TO_OBJECTIVE if k in trainer}
    raw = {
        "objective": objective,
        "evaluation": evaluation or {},
        "policy": {"name": "toy-flow"},
        "sampler": sampler or {"name": "dance-sde", "num_steps": 6},
        "rewards": rewards or [{"name": "jpeg-incompressibility"}],
        "trainer": {
            "iterations": 2,
            "prompts_per_iteration": 2,
            "group_size": 4,
            "learning_rate": 1e-2,
            "sample_every": 1,
            "checkpoint_every": 1,
            **(trainer or {}),
        },
    }
    return Trainer(resolve(raw, registry), tmp_path, dance.Runtime(), registry)


@pytest.mark.parametrize(
    "rollout_batch, micro_batch, accumulation",
    [(1, 1, 0), (3, 4, 0), (8, 5, 2), (8, 24, 1), (2, 7, 3)],
)
def test_ratio_is_one_before_first_step_for_any_layout(
    registry, tmp_path, rollout_batch, micro_batch, accumulation
):
    # 'rollout' compares against the log-probs stored during the rollout: this checks that the
    # rollout and training layouts give the same numerics (DanceGRPO's defect).
    trainer = make_trainer(
        registry,
        tmp_path,
        {
            "rollout_batch_size": rollout_batch,
            "micro_batch_size": micro_batch,
            "gradient_accumulation_steps": accumulation,
            "old_log_probs": "rollout",
        },
    )
    metrics = trainer.iteration(0)
    assert metrics["ratio/first_step_max_dev"] < 1e-5
    assert metrics["rollout_logprob_drift"] < 1e-5


def test_update_changes_only_trainable_weights(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path)
    before = [p.detach().clone() for p in trainer.params]
    frozen = trainer.policy.w1.clone()
    trainer.iteration(0)
    assert all(not torch.equal(b, p) for b, p in zip(before, trainer.params, strict=True))
    assert torch.equal(frozen, trainer.policy.w1)


def test_gradient_does_not_depend_on_micro_batch_size(registry, tmp_path):
    grads = []
    for micro in (1, 5, 48):
        trainer = make_trainer(registry, tmp_path / str(micro), {"micro_batch_size": micro})
        captured = {}
        real_step = trainer.optimizer.step

        def step(real_step=real_step, trainer=trainer, captured=captured):
            captured["g"] = [p.grad.clone() for p in trainer.params]
            real_step()

        trainer.optimizer.step = step
        trainer.iteration(0)
        grads.append(captured["g"])
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_trained_steps_and_pairs(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path, {"timestep_fraction": 0.6})
    seen = []
    real = trainer.objective.transition

    def spy(rollout, i, s):
        seen.append((i.clone(), s.clone()))
        return real(rollout, i, s)

    trainer.objective.transition = spy
    trainer.iteration(0)
    steps = torch.cat([s for _, s in seen])
    samples = torch.cat([i for i, _ in seen])
    # 6 steps, last excluded -> 5 trainable, int(0.6 * 5) = 3 per sample, 8 samples
    assert steps.numel() == 8 * 3 and int(steps.max()) <= 4
    assert torch.bincount(samples).tolist() == [3] * 8


def test_shared_initial_noise_within_groups(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path)
    noise = trainer.initial_noise(torch.arange(8), it=0)
    assert torch.equal(noise[0], noise[3]) and not torch.equal(noise[0], noise[4])
    trainer = make_trainer(registry, tmp_path, {"share_initial_noise": False})
    noise = trainer.initial_noise(torch.arange(8), it=0)
    assert not torch.equal(noise[0], noise[1])


def test_resume_continues_bit_for_bit(registry, tmp_path):
    straight = make_trainer(registry, tmp_path / "a", {"iterations": 3})
    straight.run()
    first = make_trainer(registry, tmp_path / "b", {"iterations": 1})
    first.run()
    resumed = make_trainer(registry, tmp_path / "b", {"iterations": 3})
    resumed.run(resume=True)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "iter-000003"


def test_run_writes_its_files(registry, tmp_path):
    make_trainer(registry, tmp_path, {"ema_decay": 0.9}).run()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2

    m = json.loads(lines[-1])
    for key in (
        "reward/jpeg-incompressibility/mean",
        "reward/jpeg-incompressibility/std",
        "loss",
        "ratio/mean",
        "clip_fraction",
        "kl",
        "grad_norm",
        "lr",
        "time/rollout",
        "time/reward",
        "time/update",
    ):
        assert key in m, key
    assert (tmp_path / "config.toml").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "samples" / "iter-000000.png").is_file()
    ckpt = tmp_path / "checkpoints" / "iter-000002"
    assert (ckpt / "trained" / "toy_lora.safetensors").is_file()
    assert (ckpt / "ema" / "toy_lora.safetensors").is_file()
    assert (ckpt / "trainer_state.pt").is_file()


def test_kl_to_reference(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path, {"kl_coef": 0.1, "gradient_accumulation_steps": 1})
    m = trainer.iteration(0)
    assert m["kl"] > 0  # several optimizer steps: the policy moved away from the reference


def test_nan_reward_fails_loudly_by_default(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path, rewards=[{"name": "flaky"}])
    with pytest.raises(RewardError, match="flaky.*non-finite"):
        trainer.iteration(0)


def test_raising_reward_fails_loudly_by_default(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path, rewards=[{"name": "flaky", "mode": "raise"}])
    with pytest.raises(RewardError, match="reward server down"):
        trainer.iteration(0)


def test_exclude_policy_drops_failed_samples(registry, tmp_path):
    trainer = make_trainer(
        registry, tmp_path, {"on_reward_failure": "exclude"}, rewards=[{"name": "flaky"}]
    )
    m = trainer.iteration(0)
    assert m["excluded_samples"] == 1
    assert m["reward/flaky/mean"] == m["reward/flaky/mean"]  # not NaN
    trainer = make_trainer(
        registry,
        tmp_path,
        {"on_reward_failure": "exclude"},
        rewards=[{"name": "flaky", "mode": "raise"}],
    )
    assert trainer.iteration(0)["excluded_samples"] == 8


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_after_the_iteration_with_a_checkpoint(registry, tmp_path):
    trainer = make_trainer(
        registry,
        tmp_path,
        {"iterations": 5, "checkpoint_every": 0},
        rewards=[{"name": "flaky", "mode": "interrupt"}],
    )
    summary = trainer.run()
    assert summary["interrupted"] and summary["iterations"] == 1
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-000001"


def test_deterministic_sampler_is_rejected(registry):
    raw = {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "ode"},
        "rewards": [{"name": "jpeg-compressibility"}],
    }
    with pytest.raises(dance.errors.ConfigError, match="deterministic"):
        resolve(raw, registry)


def test_evaluation_before_and_after_with_report(registry, tmp_path):
    evaluation = {"prompts": "pkg:dance/data/prompts.txt", "seeds": 1, "num_steps": 3}
    summary = make_trainer(registry, tmp_path, evaluation=evaluation).run()
    report = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval_before"] == report["eval_before"]
    for stage in ("eval_before", "eval_after"):
        assert report[stage]["images"] == 32
        assert math.isfinite(report[stage]["reward_mean"])
    # The LoRA delta starts at zero, so 'before' is the base model; training changed the images.
    assert report["eval_before"]["reward_mean"] != report["eval_after"]["reward_mean"]
    for name in ("eval_grid.png", "reward_curve.png", "summary.json"):
        assert (tmp_path / name).is_file()
    assert report["files"]["eval_grid"] == "eval_grid.png"
    # Image-by-image comparison of the two stages, from the per-image scores under eval/.
    per_image = {
        stage: json.loads((tmp_path / "eval" / f"{stage}.json").read_text())["per_image"]
        for stage in ("before", "after")
    }
    change = report["eval_change"]["reward"]
    before, after = per_image["before"]["reward"], per_image["after"]["reward"]
    diffs = [a - b for b, a in zip(before, after, strict=True)]
    assert change["images_better"] == sum(d > 1e-6 for d in diffs)
    assert change["images_worse"] == sum(d < -1e-6 for d in diffs)
    assert change["mean_change"] == pytest.approx(
        report["eval_after"]["reward_mean"] - report["eval_before"]["reward_mean"], abs=1e-6
    )
    assert "per_image" not in report["eval_before"]


def test_best_of_n_trains_only_the_extremes(registry, tmp_path):
    trainer = make_trainer(
        registry, tmp_path, {"group_size": 6, "train_per_group": 2, "share_initial_noise": False}
    )
    seen = {"rows": []}
    real_compute, real_update, real_transition = (
        trainer.advantage.compute,
        trainer.update,
        trainer.objective.transition,
    )

    def compute(*args, **kwargs):
        seen["all"] = real_compute(*args, **kwargs)
        return seen["all"]

    def update(rollout, advantages, trained, it):
        seen["trained"] = trained.clone()
        return real_update(rollout, advantages, trained, it)

    def transition(rollout, i, s):
        seen["rows"] += i.tolist()
        return real_transition(rollout, i, s)

    trainer.advantage.compute, trainer.update = compute, update
    trainer.objective.transition = transition
    metrics = trainer.iteration(0)
    per_group = seen["all"].reshape(2, 6)
    expected = torch.cat([per_group.min(dim=1).values, per_group.max(dim=1).values])
    assert seen["trained"].sum() == 4  # 2 prompts x k = 2, not 2 x 6
    assert sorted(seen["all"][seen["trained"]].tolist()) == sorted(expected.tolist())
    # only the chosen samples' steps are recomputed: 3 steps each
    trained_rows = torch.nonzero(seen["trained"]).squeeze(1).tolist()
    assert sorted(set(seen["rows"])) == trained_rows and len(seen["rows"]) == 4 * 3
    assert metrics["trained_samples"] == 4 and metrics["trained_pairs"] == 12


def test_only_the_sde_window_is_trained(registry, tmp_path):
    sampler = {"name": "flow-sde", "num_steps": 6, "sde_window_start": 1, "sde_window_size": 2}
    trainer = make_trainer(
        registry, tmp_path, {"timestep_fraction": 1.0, "old_log_probs": "rollout"}, sampler=sampler
    )
    seen = []
    real = trainer.objective.transition

    def spy(rollout, i, s):
        seen.append(s.clone())
        return real(rollout, i, s)

    trainer.objective.transition = spy
    metrics = trainer.iteration(0)
    steps = torch.cat(seen)
    assert sorted(set(steps.tolist())) == [1, 2] and steps.numel() == 8 * 2
    assert metrics["ratio/first_step_max_dev"] < 1e-5


# MixGRPO's sliding window over 6 steps: a window of 2 that moves by 1 step every iteration and
# restarts after its last start (step 4 = num_steps - 2): steps [0, 1], [1, 2], [2, 3], [3, 4],
# [4] (the last step is never in it), then [0, 1] again.
SLIDING = {
    "name": "flow-sde",
    "num_steps": 6,
    "sde_window_size": 2,
    "sde_window_schedule": "progressive",
    "sde_window_shift_interval": 1,
}
SLIDING_STEPS = [[0, 1], [1, 2], [2, 3], [3, 4], [4], [0, 1]]


def _spy_trained_steps(trainer) -> list[list[int]]:
    """Record the steps the objective's transition is asked for; one list per iteration run."""
    seen: list[list[int]] = []
    real_transition, real_iteration = trainer.objective.transition, trainer.iteration

    def transition(rollout, i, s):
        seen[-1].extend(s.tolist())
        return real_transition(rollout, i, s)

    def iteration(it):
        seen.append([])
        return real_iteration(it)

    trainer.objective.transition, trainer.iteration = transition, iteration
    return seen


def test_only_the_sliding_window_is_trained_at_each_iteration(registry, tmp_path):
    trainer = make_trainer(
        registry,
        tmp_path,
        {"iterations": 6, "timestep_fraction": 1.0, "old_log_probs": "rollout"},
        sampler=SLIDING,
    )
    seen = _spy_trained_steps(trainer)
    rollouts = []
    real_rollout = trainer.rollout
    trainer.rollout = lambda *a: rollouts.append(real_rollout(*a)) or rollouts[-1]
    trainer.run()
    assert [sorted(set(s)) for s in seen] == SLIDING_STEPS
    assert [len(s) for s in seen] == [8 * len(w) for w in SLIDING_STEPS]  # every sample, step
    for rollout, window in zip(rollouts, SLIDING_STEPS, strict=True):
        noisy = rollout.sampler.noisy_steps(rollout.schedule)
        assert torch.nonzero(noisy).squeeze(1).tolist() == window
        # ODE steps outside the window: no density, nothing drawn.
        outside = torch.ones(6, dtype=torch.bool)
        outside[window] = False
        assert (rollout.log_probs[:, outside] == 0).all()
        assert (rollout.log_probs[:, window] != 0).all()
    assert trainer.sampler.for_iteration(0) is not trainer.sampler  # the trainer's is unmoved


def test_a_resumed_run_slides_from_the_window_of_its_iteration(registry, tmp_path):
    options = {"timestep_fraction": 1.0, "old_log_probs": "rollout"}
    straight = make_trainer(registry, tmp_path / "a", {"iterations": 5, **options}, sampler=SLIDING)
    straight.run()
    first = make_trainer(registry, tmp_path / "b", {"iterations": 3, **options}, sampler=SLIDING)
    first.run()
    resumed = make_trainer(registry, tmp_path / "b", {"iterations": 5, **options}, sampler=SLIDING)
    seen = _spy_trained_steps(resumed)
    resumed.run(resume=True)
    assert [sorted(set(s)) for s in seen] == SLIDING_STEPS[3:5]
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)


def test_a_window_on_the_last_step_alone_cannot_train(registry, tmp_path):
    from dance.errors import ConfigError

    sampler = {"name": "flow-sde", "num_steps": 4, "sde_window_start": 3, "sde_window_size": 1}
    with pytest.raises(ConfigError, match="no sampling step can be trained"):
        make_trainer(registry, tmp_path, sampler=sampler)
