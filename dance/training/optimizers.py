"""The optimizer and the learning-rate schedule, chosen in the ``[trainer]`` table.

``trainer.optimizer``:

- ``adamw``: ``torch.optim.AdamW`` (the default; every earlier run used it);
- ``adamw8bit``: bitsandbytes' 8-bit AdamW (blockwise-quantized moments, 2 bytes per trained
  parameter instead of 8), on CUDA only, through :class:`dance.training.adamw8bit.AdamW8bitShards`
  so that it steps FSDP2's sharded parameters and its states go into dance's checkpoints.

``trainer.lr_schedule`` (the learning rate of each optimizer step is
``learning_rate x lr_factor(...)``):

- ``constant``: factor 1;
- ``linear``: linear warm-up over ``lr_warmup_steps`` optimizer steps, ``(s + 1) / w`` for the
  ``s``-th step (0-based), then 1 (with ``lr_warmup_steps = 0``: constant; the default);
- ``cosine``: the same warm-up, then cosine decay from 1 to ``lr_min_ratio`` over the run
  (SGDR's annealing, Loshchilov & Hutter, arXiv 1608.03983, eq. 5, one cycle, no restart).

The cosine needs the run's length in optimizer steps. An iteration's optimizer steps are
``ceil(pairs / (micro_batch_size x gradient_accumulation_steps))`` over the global batch, the same
at any number of processes, but the pair count can change between iterations (samples excluded
after a reward failure; an objective whose trained units vary). So the decay follows training
progress: the ``j``-th of the ``n`` optimizer steps of iteration ``i`` (0-based) of a run of ``I``
iterations sits at ``x = i n + j`` of ``T = I n`` steps, progress ``x / T = (i + j / n) / I``. When
every iteration has ``n`` steps (the usual case, Best-of-N included) ``x`` is the step's index in
the run and ``T`` the run's step count: the textbook schedule, exactly. The decay starts after the
warm-up: ``q = (x - w) / (T - w)`` clipped to [0, 1], factor
``r + (1 - r) (1 + cos(pi q)) / 2``. Warm-up counts the optimizer steps taken (``s``), which the
checkpoint keeps; a resumed run continues the schedule exactly, as long as ``trainer.iterations``
is unchanged (a longer run stretches the rest of the decay).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from dance.errors import ConfigError
from dance.training.trainer_config import TrainerConfig

INSTALL_8BIT = "pip install 'dance-grpo[8bit]' (or pip install bitsandbytes)"


def check_optimizer(cfg: TrainerConfig, device: torch.device) -> None:
    """Fail fast, before any model loads, when the chosen optimizer cannot run here."""
    if cfg.optimizer != "adamw8bit":
        return
    if device.type != "cuda":
        raise ConfigError(
            f"trainer.optimizer=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit kernels); this "
            f"run's device is {device.type}: use trainer.optimizer=adamw"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"trainer.optimizer=adamw8bit needs bitsandbytes, which is not installed ({exc}): "
            f"{INSTALL_8BIT}, or use trainer.optimizer=adamw"
        ) from None


def build_optimizer(
    params: Sequence[torch.nn.Parameter], cfg: TrainerConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer of ``trainer.optimizer`` over the trained ``params`` (FSDP2 DTensors or
    plain tensors), with the learning rate of the schedule's first step."""
    check_optimizer(cfg, device)
    hyper: dict[str, Any] = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw8bit":
        from dance.training.adamw8bit import AdamW8bitShards

        return AdamW8bitShards(list(params), **hyper)
    return torch.optim.AdamW(list(params), **hyper)


def lr_factor(
    schedule: str,
    taken: int,
    position: float,
    total: float,
    warmup: int,
    min_ratio: float,
) -> float:
    """The learning-rate factor of one optimizer step (see the module docstring).

    ``taken``: optimizer steps the run took before this one (``s``); ``position`` and ``total``:
    ``x`` and ``T``, this step's place in the run and the run's length, in optimizer steps at the
    current iteration's rate."""
    if schedule == "constant":
        return 1.0
    if warmup and taken < warmup:
        return min(1.0, (taken + 1) / warmup)  # the form LambdaLR ran before: same floats
    if schedule == "linear":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    span = total - warmup
    q = min(max((position - warmup) / span, 0.0), 1.0) if span > 0 else 1.0
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))


class LRSchedule:
    """Sets the learning rate of every optimizer step from ``trainer.lr_schedule``.

    Call :meth:`apply` before each optimizer step with its place in the iteration, and
    :meth:`step` after it. Its state (the optimizer steps taken) is in the checkpoint."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.taken = 0
        self.apply(0, 0, 1)  # the first step's rate, as LambdaLR set it on construction

    def apply(self, iteration: int, index: int, steps_in_iteration: int) -> float:
        """Set and return the learning rate of optimizer step ``index`` of the
        ``steps_in_iteration`` steps of ``iteration``."""
        cfg, n = self.cfg, steps_in_iteration
        factor = lr_factor(
            cfg.lr_schedule,
            self.taken,
            position=iteration * n + index,
            total=cfg.iterations * n,
            warmup=cfg.lr_warmup_steps,
            min_ratio=cfg.lr_min_ratio,
        )
        lr = cfg.learning_rate * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """After an optimizer step."""
        self.taken += 1

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints written before this schedule hold torch's LambdaLR state, whose
        # last_epoch counts the same optimizer steps.
        self.taken = int(
            state["optimizer_steps"] if "optimizer_steps" in state else state["last_epoch"]
        )
