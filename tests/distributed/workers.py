"""Scenarios that tests/distributed runs under torchrun (``launch``), one process per rank.

    python -m torch.distributed.run --standalone --nproc-per-node N workers.py SCENARIO ARGS_JSON

Each scenario builds a trainer on the tiny FLUX checkpoint (gloo on CPU) and writes what the test
asserts on to files under ``args["out"]``: ``rank{R}.json`` and, for weights, ``*.pt`` from rank 0.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import dance
import dance.distributed as dist
import dance.training.checkpoint as checkpoint
from dance.cli.recipe import resolve
from dance.registry import get_registry
from dance.training.sharding import clip_gradients, local_bytes
from dance.training.trainer import Trainer

SMALL = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4, "lora_alpha": 8.0}


def make_trainer(args: dict[str, Any]) -> Trainer:
    raw = {
        "policy": {"name": "flux", "model": args["model"], **SMALL, **args.get("policy", {})},
        "sampler": {"name": "dance-sde", "num_steps": 3},
        "rewards": [{"name": "jpeg-compressibility"}],
        "objective": args.get("objective", {}),
        "trainer": {
            "prompts_per_iteration": 2,
            "group_size": 2,
            "iterations": 2,
            "learning_rate": 1e-3,
            "sample_every": 0,
            "checkpoint_every": 1,
            **args.get("trainer", {}),
        },
    }
    registry = get_registry()
    return Trainer(resolve(raw, registry), args["run_dir"], dance.Runtime.auto("cpu"), registry)


def gather(t: torch.Tensor) -> torch.Tensor:
    """A full copy of ``t`` (a DTensor is gathered: every rank calls this together)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def full_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Trainable weights by name, gathered (every rank calls this)."""
    params = dict(trainer.policy.trained.network.named_parameters())
    out = {}
    for name in trainer.policy.trained.trainable_names:
        out[name] = gather(params[name])
    return out


def full_optimizer(trainer: Trainer) -> dict[str, torch.Tensor]:
    """exp_avg and exp_avg_sq of every trainable weight, gathered, by name."""
    names = trainer.policy.trained.trainable_names
    out = {}
    for name, p in zip(names, trainer.params, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{name}.{key}"] = gather(trainer.optimizer.state[p][key])
    return out


def fixed_backward(trainer: Trainer, rows: list[int]) -> None:
    """Backward of sum over ``rows`` of a fixed loss of the policy's output (same inputs at any
    world size: row r's latents and prompt depend only on r)."""
    policy = trainer.policy
    cond = policy.encode([dance.Prompt(f"a red square {r}") for r in rows])
    gen = torch.Generator().manual_seed(1)
    latents = policy.initial_noise(4, gen)[rows]  # [b, S, C]
    t = torch.tensor([0.9, 0.7, 0.5, 0.3])[rows]
    out = policy.predict(latents, t, cond)  # [b, S, C]
    (out.square().mean(dim=(1, 2)) * torch.tensor([1.0, 2.0, 3.0, 4.0])[rows]).sum().backward()


def gathered_ema(trainer: Trainer) -> list[torch.Tensor]:
    if trainer.ema is None:
        return []
    return [gather(t) for t in trainer.ema.shadow]


def snapshot(trainer: Trainer) -> dict[str, Any]:
    return {
        "weights": full_weights(trainer),
        "optimizer": full_optimizer(trainer),
        "ema": gathered_ema(trainer),
    }


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) a GRPO run. Records per-rank bytes of the trainable weights, of their
    gradients (at the first optimizer step) and of the optimizer states; with ``fixed_norm`` the
    global gradient norm of a fixed loss whose rows are split over the ranks; rank 0 saves the
    gathered weights, optimizer states and EMA after a resume and at the end. ``kill_at``: rank 1
    dies once its part of that checkpoint is written, before the checkpoint is renamed."""
    trainer = make_trainer(args)
    rank, world = dist.rank(), dist.world_size()
    result: dict[str, Any] = {
        "sharded": trainer.sharded,
        "dtensor_params": sum(hasattr(p, "to_local") for p in trainer.params),
        "params": len(trainer.params),
        "param_bytes": local_bytes(trainer.params),
    }
    write_result(args, result)  # what is known before training, in case the run is killed
    if args.get("fixed_norm"):
        trainer.policy.train(True)
        fixed_backward(trainer, [r for r in range(4) if r % world == rank])
        result["grad_norm"] = clip_gradients(trainer.params, float("inf"))
        trainer.optimizer.zero_grad(set_to_none=True)
    step = trainer._optimizer_step

    def measured_step(*args: object) -> float:
        if "grad_bytes" not in result:
            grads = [p.grad for p in trainer.params if p.grad is not None]
            result["grad_bytes"] = local_bytes(grads)
        return step(*args)

    trainer._optimizer_step = measured_step  # type: ignore[method-assign]
    if args.get("kill_at"):
        original = checkpoint._write

        def dying_write(tmp, *rest):  # noqa: ANN001, ANN202
            original(tmp, *rest)
            if rank == 1 and tmp.name.endswith(f"{args['kill_at']:06d}"):
                os._exit(9)

        checkpoint._write = dying_write
    start = None
    if args.get("resume"):
        trainer.resume()
        start = snapshot(trainer)
    summary = trainer.run(resume=False)
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0]
    result["optimizer_bytes"] = local_bytes(states)
    result["iterations"] = summary["iterations"]
    end = snapshot(trainer)
    if rank == 0:
        torch.save({"start": start, "end": end}, Path(args["out"]) / f"{args['tag']}-{world}.pt")
    return result


def write_result(args: dict[str, Any], result: dict[str, Any]) -> None:
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args['tag']}-rank{dist.rank()}-of-{dist.world_size()}.json"
    (out / name).write_text(json.dumps(result))


def main() -> None:
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_from_env()
    write_result(args, {"train": train}[scenario](args))
    dist.end_process(0)


if __name__ == "__main__":
    main()
