"""Settings of the training loop (the ``[trainer]`` table of a recipe).

Defaults follow DanceGRPO's FLUX recipe where it defines one (group size 12, learning rate 1e-5,
weight decay 1e-4, gradient clipping 1.0). The objective's own settings (clip range, KL, trained
steps) are in the ``[objective]`` table (:mod:`dance.objectives`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dance.config import option
from dance.errors import ConfigError


@dataclass
class TrainerConfig:
    iterations: int = option(100, "training iterations (rollout + reward + update) to run", ge=1)
    prompts_per_iteration: int = option(
        2,
        "distinct prompts per iteration, over all processes (prompts x group_size need not "
        "divide by the number of processes)",
        ge=1,
    )
    group_size: int = option(12, "samples drawn per prompt (G); advantages are relative", ge=2)
    share_initial_noise: bool = option(
        True, "start every sample of a group from the same initial noise (DanceGRPO)"
    )
    train_per_group: int = option(
        0,
        "Best-of-N training: update only on the k/2 highest- and k/2 lowest-advantage samples "
        "of each group (k = this value, even, below group_size) while all group_size samples "
        "set the group statistics; DanceGRPO's HunyuanVideo rolls out 24 and trains 8. "
        "0 = train on every sample",
        ge=0,
    )
    rollout_batch_size: int = option(
        4, "samples per forward pass during the rollout, on each process", ge=1
    )
    micro_batch_size: int = option(
        4, "(sample, step) pairs per forward+backward in the update, on each process", ge=1
    )
    gradient_accumulation_steps: int = option(
        0,
        "size of an optimizer step, counted over the whole job: each optimizer step trains "
        "micro_batch_size x this many (sample, step) pairs of the iteration, split over the "
        "processes, so the number of optimizer steps per iteration does not depend on the "
        "number of processes (one process: this many micro-batches per step); "
        "0 = one optimizer step per iteration",
        ge=0,
    )
    optimizer: str = option(
        "adamw",
        "'adamw' = torch.optim.AdamW; 'adamw8bit' = bitsandbytes' 8-bit AdamW (moments in 8 "
        "bits: 2 bytes per trained parameter instead of 8; CUDA only, pip install "
        "'dance-grpo[8bit]')",
        choices=("adamw", "adamw8bit"),
    )
    learning_rate: float = option(1e-5, "peak learning rate (after warm-up) of the optimizer", gt=0)
    lr_schedule: str = option(
        "linear",
        "learning rate per optimizer step: 'constant' = learning_rate throughout; 'linear' = "
        "linear warm-up over lr_warmup_steps, then constant (with no warm-up steps: constant); "
        "'cosine' = the same warm-up, then cosine decay to lr_min_ratio x learning_rate at the "
        "end of the run, following training progress (iterations done), see docs/recipes.md",
        choices=("constant", "linear", "cosine"),
    )
    lr_warmup_steps: int = option(
        0, "optimizer steps of linear warm-up, from learning_rate / this to learning_rate", ge=0
    )
    lr_min_ratio: float = option(
        0.0,
        "cosine schedule: the learning rate it decays to, as a fraction of learning_rate",
        ge=0,
        le=1,
    )
    weight_decay: float = option(1e-4, "AdamW weight decay", ge=0)
    adam_beta1: float = option(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = option(0.999, "AdamW beta2", ge=0, lt=1)
    adam_eps: float = option(1e-8, "AdamW epsilon", gt=0)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this; 0 turns clipping off", ge=0)
    ema_decay: float = option(
        0.0, "decay of an exponential moving average of the trained weights; 0 = off", ge=0, lt=1
    )
    reward_on: str = option(
        "last_x0",
        "what the reward scores: 'last_x0' = the clean prediction of the last step (DanceGRPO), "
        "'final' = the final latents",
        choices=("last_x0", "final"),
    )
    on_reward_failure: str = option(
        "error",
        "a reward that raises or returns NaN: 'error' stops the run; 'exclude' leaves those "
        "samples out of the group statistics and the update",
        choices=("error", "exclude"),
    )
    prompts: str = option("", "text file with one prompt per line; empty = the bundled prompts")
    seed: int = option(
        0,
        "seed of prompts, noise and step selection; draws are keyed by (seed, iteration, "
        "sample), so any number of processes gives the same run",
        ge=0,
    )
    sample_every: int = option(
        10, "write a PNG grid of rollout samples every N iterations; 0 = off", ge=0
    )
    checkpoint_every: int = option(
        10, "checkpoint every N iterations (and at the end); 0 = end only", ge=0
    )
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep", ge=1)
    loggers: list[str] = option(
        ["jsonl", "tensorboard"],
        "where each iteration's metrics go, by logger name (see `dance plugins`): jsonl = "
        "metrics.jsonl (required: the run report reads it), tensorboard = tensorboard/ events, "
        "wandb = Weights & Biases (the dance-wandb plugin); each logger's options go in a "
        "[loggers.NAME] table",
    )
    distributed_timeout: float = option(
        1800.0,
        "seconds a process waits for the others (to start, or at a collective) before the "
        "whole multi-process job fails; a rank that raises stops the job at once regardless",
        gt=0,
    )
    fsdp_cpu_offload: bool = option(
        False,
        "under torchrun on GPUs, keep the FSDP2 shards of the trained weights, their gradients "
        "and the optimizer states in CPU memory (CPUOffloadPolicy); for models whose shards do "
        "not fit in GPU memory, at the cost of host-device copies every step",
    )

    def check(self) -> None:
        if self.lr_schedule == "constant" and self.lr_warmup_steps:
            raise ConfigError(
                f"trainer.lr_schedule='constant' has no warm-up, but trainer.lr_warmup_steps="
                f"{self.lr_warmup_steps}: use trainer.lr_schedule='linear' (warm-up, then "
                "constant) or set trainer.lr_warmup_steps=0"
            )
        if self.optimizer == "adamw8bit" and self.fsdp_cpu_offload:
            raise ConfigError(
                "trainer.optimizer='adamw8bit' steps on the GPU, but trainer.fsdp_cpu_offload="
                "true keeps the optimizer states in CPU memory: use trainer.optimizer='adamw' "
                "with the offload, or turn the offload off"
            )
        if "jsonl" not in self.loggers:
            listed = ",".join(["jsonl", *self.loggers])
            raise ConfigError(
                "trainer.loggers must include 'jsonl': the run report (summary.json, "
                f"reward_curve.png) reads metrics.jsonl; use trainer.loggers={listed}"
            )
        twice = sorted({name for name in self.loggers if self.loggers.count(name) > 1})
        if twice:
            raise ConfigError(f"trainer.loggers names '{twice[0]}' twice; list each logger once")
        k = self.train_per_group
        if k and (k % 2 or k < 2 or k >= self.group_size):
            raise ConfigError(
                f"trainer.train_per_group must be 0 (train every sample) or an even number from 2 "
                f"to group_size - 1 = {self.group_size - 1}, got {k}"
            )
