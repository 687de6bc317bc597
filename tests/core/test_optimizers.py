"""trainer.optimizer and trainer.lr_schedule (dance/training/optimizers.py, adamw8bit.py).

Schedules are checked against values computed independently of the implementation (closed
forms, and torch's own LambdaLR and CosineAnnealingLR); the default against the code it replaced;
a resume in the middle of a cosine against the uninterrupted run. Where bitsandbytes (0.50 or
later) is installed (pip install 'dance-grpo[8bit]'; not part of the test extra), the 8-bit
optimizer runs on its CPU kernels (the product refuses CPU devices; these tests call the wrapper
directly), and on its CUDA kernels too where a GPU is present.
"""

from __future__ import annotations

import io
import math
import signal
import sys

import pytest
import torch

import dance
from dance.cli.recipe import MOVED_TO_OBJECTIVE, resolve
from dance.config import build
from dance.errors import ConfigError
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.training import optimizers
from dance.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from dance.training.optimizers import LRSchedule, build_optimizer, check_optimizer, lr_factor
from dance.training.trainer import Trainer
from dance.training.trainer_config import TrainerConfig

# Three optimizer steps per iteration on the toy policy: 8 samples x 3 trained steps = 24 pairs,
# 8 pairs per step.
STEPPED = {"micro_batch_size": 4, "gradient_accumulation_steps": 2}


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def make_trainer(registry, tmp_path, trainer=None) -> Trainer:
    trainer = dict(trainer or {})
    objective = {k: trainer.pop(k) for k in MOVED_TO_OBJECTIVE if k in trainer}
    raw = {
        "objective": objective,
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 6},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "trainer": {
            "iterations": 2,
            "prompts_per_iteration": 2,
            "group_size": 4,
            "learning_rate": 1e-2,
            "sample_every": 0,
            "checkpoint_every": 0,
            **trainer,
        },
    }
    return Trainer(resolve(raw, registry), tmp_path, dance.Runtime(), registry)


def record_lrs(trainer: Trainer) -> list[float]:
    """The learning rate of every optimizer step the trainer takes from now on."""
    lrs: list[float] = []
    step = trainer.optimizer.step

    def recording(*args, **kwargs):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    return lrs


def config(**values) -> TrainerConfig:
    return build(TrainerConfig, values)


# ---- schedules: closed forms -------------------------------------------------------------------


def test_cosine_factor_at_known_points():
    # 10 steps, 2 of warm-up, decay to 0.1: the decay spans steps 2..10 (q = (s - 2) / 8).
    f = [lr_factor("cosine", s, s, 10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert f[4] == pytest.approx(0.1 + 0.9 * (2 + math.sqrt(2)) / 4, abs=1e-15)  # q = 1/4
    assert f[6] == pytest.approx(0.55, abs=1e-15)  # q = 1/2: halfway between 1 and 0.1
    assert f[8] == pytest.approx(0.1 + 0.9 * (2 - math.sqrt(2)) / 4, abs=1e-15)  # q = 3/4
    assert lr_factor("cosine", 10, 10, 10, warmup=2, min_ratio=0.1) == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[2:], f[3:], strict=False))


def test_linear_and_constant_factors():
    assert [lr_factor("linear", s, s, 9, 4, 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert [lr_factor("linear", s, s, 9, 0, 0.0) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [lr_factor("constant", s, s, 9, 0, 0.5) for s in range(3)] == [1.0, 1.0, 1.0]


def test_cosine_follows_progress_when_the_steps_per_iteration_change():
    """Excluded samples can take an optimizer step from an iteration: the decay follows the
    fraction of the run done, (i + j / n_i) / I, and never goes back up."""
    cfg = config(iterations=4, lr_schedule="cosine", lr_min_ratio=0.0, learning_rate=1.0)
    schedule = LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg)
    lrs, progress = [], []
    for i, n in enumerate((3, 3, 2, 3)):
        for j in range(n):
            lrs.append(schedule.apply(i, j, n))
            schedule.step()
            progress.append((i + j / n) / 4)
    # cos^2(pi p / 2) = (1 + cos(pi p)) / 2: the same curve written another way
    assert lrs == pytest.approx([math.cos(math.pi * p / 2) ** 2 for p in progress], abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_in_the_trainer_matches_torch_schedulers(registry, tmp_path):
    """Warm-up then cosine over a 3-iteration run of 3 optimizer steps each, against torch's
    LambdaLR (warm-up) and CosineAnnealingLR (decay), which share no code with dance's."""
    base, warmup, ratio = 1e-2, 2, 0.1
    cfg = {"iterations": 3, "lr_schedule": "cosine", "lr_warmup_steps": warmup, **STEPPED}
    trainer = make_trainer(registry, tmp_path, {**cfg, "lr_min_ratio": ratio})
    lrs = record_lrs(trainer)
    steps = [trainer.iteration(it)["optimizer_steps"] for it in range(3)]
    assert steps == [3.0, 3.0, 3.0]
    total = len(lrs)

    dummy = [torch.nn.Parameter(torch.zeros(1))]
    expected = [(s + 1) / warmup * base for s in range(warmup)]
    decay_opt = torch.optim.SGD(dummy, lr=base)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(
        decay_opt, T_max=total - warmup, eta_min=ratio * base
    )
    for _ in range(total - warmup):
        expected.append(decay_opt.param_groups[0]["lr"])
        decay_opt.step()
        decay.step()
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] > ratio * base


# ---- the default is today's optimizer and schedule ---------------------------------------------


class _TodaysSchedule:
    """What Trainer.__init__ built before trainer.lr_schedule existed: a LambdaLR warm-up,
    stepped after each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int) -> None:
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )

    def apply(self, *args: int) -> None:
        pass

    def step(self) -> None:
        self.scheduler.step()


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("warmup", [0, 4])
def test_default_settings_give_todays_optimizer_and_lr_sequence(registry, tmp_path, warmup):
    settings = {"lr_warmup_steps": warmup, **STEPPED}
    new = make_trainer(registry, tmp_path / "new", settings)
    assert type(new.optimizer) is torch.optim.AdamW
    assert new.cfg.optimizer == "adamw" and new.cfg.lr_schedule == "linear"
    old = make_trainer(registry, tmp_path / "old", settings)
    cfg = old.cfg
    old.optimizer = old.training.optimizer = torch.optim.AdamW(
        old.params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    old.lr_scheduler = _TodaysSchedule(old.optimizer, warmup)
    assert new.optimizer.defaults == old.optimizer.defaults
    lrs_new, lrs_old = record_lrs(new), record_lrs(old)
    for it in range(2):
        new.iteration(it)
        old.iteration(it)
    assert lrs_new == lrs_old and len(lrs_new) == 6
    for a, b in zip(new.params, old.params, strict=True):
        assert torch.equal(a, b)


def test_checkpoints_of_the_lambda_lr_era_resume_the_warm_up():
    schedule = LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), config())
    schedule.load_state_dict({"last_epoch": 5, "base_lrs": [1.0], "_step_count": 6})
    assert schedule.taken == 5 and schedule.state_dict() == {"optimizer_steps": 5}


# ---- resume ------------------------------------------------------------------------------------


def test_resume_mid_cosine_equals_the_uninterrupted_run(registry, tmp_path):
    cfg = {
        "iterations": 3,
        "lr_schedule": "cosine",
        "lr_warmup_steps": 2,
        "lr_min_ratio": 0.2,
        **STEPPED,
    }
    straight = make_trainer(registry, tmp_path / "a", cfg)
    lrs_straight = record_lrs(straight)
    straight.run()

    first = make_trainer(registry, tmp_path / "b", cfg)
    lrs_first = record_lrs(first)
    first._stop_signal = signal.SIGTERM  # as if SLURM asked it to stop: after iteration 0
    summary = first.run()
    assert summary["iterations"] == 1 and summary["stopped_by"] == "SIGTERM"
    state = torch.load(tmp_path / "b/checkpoints/iter-000001/trainer_state.pt", weights_only=True)
    assert state["lr_scheduler"] == {"optimizer_steps": 3}

    resumed = make_trainer(registry, tmp_path / "b", cfg)
    lrs_resumed = record_lrs(resumed)
    resumed.run(resume=True)
    assert lrs_first + lrs_resumed == lrs_straight and len(lrs_straight) == 9
    assert lrs_straight[2] > lrs_straight[-1] > 0.2 * 1e-2  # it decayed, not to the floor yet
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)


# ---- config errors and the 8-bit selection -----------------------------------------------------


def test_constant_schedule_with_warm_up_is_refused():
    with pytest.raises(ConfigError, match="trainer.lr_warmup_steps=3"):
        config(lr_schedule="constant", lr_warmup_steps=3)


def test_adamw8bit_with_cpu_offload_is_refused():
    with pytest.raises(ConfigError, match="fsdp_cpu_offload"):
        config(optimizer="adamw8bit", fsdp_cpu_offload=True)


def test_adamw8bit_needs_a_gpu():
    with pytest.raises(ConfigError) as exc:
        check_optimizer(config(optimizer="adamw8bit"), torch.device("cpu"))
    assert "needs a CUDA GPU" in str(exc.value) and "trainer.optimizer=adamw" in str(exc.value)
    check_optimizer(config(), torch.device("cpu"))  # adamw: anywhere


def test_adamw8bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as exc:
        check_optimizer(config(optimizer="adamw8bit"), torch.device("cuda"))
    assert "pip install 'dance-grpo[8bit]'" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1


def test_adamw8bit_is_selected_on_cuda_with_bitsandbytes():
    pytest.importorskip("bitsandbytes", minversion="0.50")
    from dance.training.adamw8bit import AdamW8bitShards

    params = [torch.nn.Parameter(torch.randn(4, 4))]
    optimizer = build_optimizer(params, config(optimizer="adamw8bit"), torch.device("cuda"))
    assert isinstance(optimizer, AdamW8bitShards)
    assert optimizer.param_groups[0]["params"] == params


# ---- the 8-bit optimizer on bitsandbytes' CPU kernels ------------------------------------------


HYPER = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 1e-2}


# bitsandbytes' CPU kernels everywhere; its CUDA kernels too where a GPU is present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _params(device: str = "cpu", seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    # one tensor in 8 bits (over 2 blocks of 256), one small enough for fp32 states
    return [
        torch.nn.Parameter(torch.randn(40, 10, generator=g).to(device)),
        torch.nn.Parameter(torch.randn(5, generator=g).to(device)),
    ]


def _step(optimizer: torch.optim.Optimizer, params, step: int, lr: float) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.device)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("device", DEVICES)
def test_shards_step_exactly_as_bitsandbytes(device):
    bnb = pytest.importorskip("bitsandbytes", minversion="0.50")
    from dance.training.adamw8bit import AdamW8bitShards

    ours, theirs = _params(device), _params(device)
    a = AdamW8bitShards(ours, **HYPER, min_8bit_size=64)
    b = bnb.optim.AdamW8bit(theirs, **HYPER, min_8bit_size=64)
    for step in range(4):
        lr = 1e-2 / (step + 1)  # the schedule changes the rate between steps
        _step(a, ours, step, lr)
        _step(b, theirs, step, lr)
    for x, y in zip(ours, theirs, strict=True):
        assert torch.equal(x, y)
    assert a.inner.state[a._shards[ours[0]]]["state1"].dtype == torch.uint8


@pytest.mark.parametrize("device", DEVICES)
def test_shards_state_is_adamws_and_resumes(device):
    pytest.importorskip("bitsandbytes", minversion="0.50")
    from dance.training.adamw8bit import AdamW8bitShards

    ours, ref = _params(device), _params(device)
    a = AdamW8bitShards(ours, **HYPER, min_8bit_size=64)
    fp32 = torch.optim.AdamW(ref, **HYPER)
    for step in range(3):
        _step(a, ours, step, 1e-2)
        _step(fp32, ref, step, 1e-2)
    saved = a.state_dict()
    exact = fp32.state_dict()
    assert saved["state"].keys() == exact["state"].keys() == {0, 1}
    for i in (0, 1):
        assert float(saved["state"][i]["step"]) == 3.0
        for key in ("exp_avg", "exp_avg_sq"):
            got, want = saved["state"][i][key], exact["state"][i][key]
            assert got.shape == want.shape and got.dtype == torch.float32
            # 8-bit dynamic quantization: a few per cent of the block's largest value
            assert (got - want).norm() < 0.05 * want.norm(), (i, key)

    # into a fresh optimizer (through torch.save / weights_only, as trainer_state.pt does)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    b = AdamW8bitShards(copies, **HYPER, min_8bit_size=64)
    # A fresh optimizer stays empty when asked for its state: torch's get_state_dict then steps
    # it once at lr 0 to lay out the states it loads into.
    assert b.state_dict()["state"] == {} and not b.state
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    again = b.state_dict()
    for i in (0, 1):
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = saved["state"][i][key], again["state"][i][key]
            assert torch.allclose(x, y, rtol=0.02, atol=1e-3 * float(x.abs().max())), (i, key)
    _step(a, ours, 3, 1e-2)
    _step(b, copies, 3, 1e-2)
    for x, y in zip(ours, copies, strict=True):
        assert torch.allclose(x, y, atol=1e-4)  # lr 1e-2: one step moves a weight by ~1e-2


def test_shards_checkpoint_through_torch_distributed_checkpoint(tmp_path):
    """Sharded-checkpoint path (a policy with trainable modules): get_state_dict and DCP."""
    pytest.importorskip("bitsandbytes", minversion="0.50")
    from dance.training.adamw8bit import AdamW8bitShards

    class Policy:
        name = "linear"

        def save_trained(self, directory: str) -> None:
            from pathlib import Path

            Path(directory).mkdir(parents=True)

    def training(seed: int) -> TrainingState:
        torch.manual_seed(seed)
        module = torch.nn.Linear(10, 40)
        params = list(module.parameters())
        return TrainingState(
            [module], params, AdamW8bitShards(params, **HYPER, min_8bit_size=64), None
        )

    a = training(0)
    for step in range(2):
        _step(a.optimizer, [a.params[0], a.params[1]], step, 1e-2)  # weight [40, 10], bias [40]
    saved = a.optimizer.state_dict()
    save_checkpoint(tmp_path, 2, Policy(), a, {"iteration": 2}, keep=1)

    b = training(1)  # other weights, no optimizer state yet
    load_checkpoint(tmp_path / "checkpoints" / "iter-000002", Policy(), b)
    for x, y in zip(a.params, b.params, strict=True):
        assert torch.equal(x, y)
    loaded = b.optimizer.state_dict()
    for i in (0, 1):
        assert float(loaded["state"][i]["step"]) == 2.0
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = saved["state"][i][key], loaded["state"][i][key]
            assert torch.allclose(x, y, rtol=0.02, atol=1e-3 * float(x.abs().max())), (i, key)


def test_toy_run_with_adamw8bit_trains_and_resumes(registry, tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes", minversion="0.50")
    from dance.training.adamw8bit import AdamW8bitShards

    # bitsandbytes' CPU kernels stand in for CUDA here: let the CPU device through.
    monkeypatch.setattr(optimizers, "check_optimizer", lambda cfg, device: None)
    monkeypatch.setattr("dance.training.trainer.check_optimizer", lambda cfg, device: None)
    cfg = {"optimizer": "adamw8bit", "lr_schedule": "cosine", "checkpoint_every": 1, **STEPPED}
    first = make_trainer(registry, tmp_path, {**cfg, "iterations": 1})
    assert isinstance(first.optimizer, AdamW8bitShards)
    before = [p.detach().clone() for p in first.params]
    first.run()
    assert all(not torch.equal(b, p) for b, p in zip(before, first.params, strict=True))
    resumed = make_trainer(registry, tmp_path, {**cfg, "iterations": 2})
    resumed.run(resume=True)
    assert resumed.iteration_done == 2 and resumed.lr_scheduler.taken == 6
    assert all(bool(torch.isfinite(p).all()) for p in resumed.params)
