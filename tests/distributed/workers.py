"""Scenarios that tests/distributed runs under torchrun (``launch``), one process per rank.

    python -m torch.distributed.run --standalone --nproc-per-node N workers.py SCENARIO ARGS_JSON

Each scenario builds a trainer on the tiny FLUX checkpoint (gloo on CPU) and writes what the test
asserts on to files under ``args["out"]``: ``rank{R}.json`` and, for weights, ``*.pt`` from rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

import dance
import dance.distributed as dist
from dance.grpo import GRPOTrainer
from dance.recipe import resolve
from dance.registry import get_registry
from dance.sharding import clip_gradients, local_bytes, local_tensor

SMALL = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4, "lora_alpha": 8.0}


def make_trainer(args: dict[str, Any]) -> GRPOTrainer:
    raw = {
        "policy": {"name": "flux", "model": args["model"], **SMALL, **args.get("policy", {})},
        "sampler": {"name": "dance-sde", "num_steps": 3},
        "rewards": [{"name": "jpeg-compressibility"}],
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
    return GRPOTrainer(resolve(raw, registry), args["run_dir"], dance.Runtime.auto("cpu"), registry)


def full_weights(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    """Trainable weights by name, gathered (every rank calls this)."""
    params = dict(trainer.policy.trained.network.named_parameters())
    out = {}
    for name in trainer.policy.trained.trainable_names:
        p = params[name].detach()
        out[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).clone()
    return out


def full_optimizer(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    """exp_avg and exp_avg_sq of every trainable weight, gathered, by name."""
    names = trainer.policy.trained.trainable_names
    out = {}
    for name, p in zip(names, trainer.params, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            t = trainer.optimizer.state[p][key]
            out[f"{name}.{key}"] = (t.full_tensor() if hasattr(t, "full_tensor") else t).clone()
    return out


def fixed_backward(trainer: GRPOTrainer, rows: list[int]) -> None:
    """Backward of sum over ``rows`` of a fixed loss of the policy's output (same inputs at any
    world size: row r's latents and prompt depend only on r)."""
    policy = trainer.policy
    cond = policy.encode([dance.Prompt(f"a red square {r}") for r in rows])
    gen = torch.Generator().manual_seed(1)
    latents = policy.initial_noise(4, gen)[rows]  # [b, S, C]
    t = torch.tensor([0.9, 0.7, 0.5, 0.3])[rows]
    out = policy.predict(latents, t, cond)  # [b, S, C]
    (out.square().mean(dim=(1, 2)) * torch.tensor([1.0, 2.0, 3.0, 4.0])[rows]).sum().backward()


def memory(args: dict[str, Any]) -> dict[str, Any]:
    """Per-rank bytes of trainable weights, gradients and optimizer states, and the global
    gradient norm of a fixed loss split over the ranks."""
    trainer = make_trainer(args)
    rank, world = dist.rank(), dist.world_size()
    result: dict[str, Any] = {
        "sharded": trainer.sharded,
        "dtensor_params": sum(hasattr(p, "to_local") for p in trainer.params),
        "params": len(trainer.params),
        "param_bytes": local_bytes(trainer.params),
    }
    trainer.policy.train(True)
    rows = [r for r in range(4) if r % world == rank]  # 1 process: all 4 rows
    fixed_backward(trainer, rows)
    result["grad_bytes"] = local_bytes(p.grad for p in trainer.params if p.grad is not None)
    result["grad_norm"] = clip_gradients(trainer.params, float("inf"))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0]
    result["optimizer_bytes"] = local_bytes(states)
    weights = full_weights(trainer)
    if rank == 0:
        torch.save(weights, Path(args["out"]) / f"memory-{world}.pt")
    return result


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) a GRPO run; rank 0 saves the gathered weights and optimizer states at the
    start (after a resume) and at the end."""
    trainer = make_trainer(args)
    world = dist.world_size()
    tag = args.get("tag", "run")
    if args.get("resume"):
        trainer.resume()
    start = (full_weights(trainer), full_optimizer(trainer)) if args.get("resume") else None
    summary = trainer.run(resume=False)
    end = (full_weights(trainer), full_optimizer(trainer))
    if dist.is_main():
        torch.save({"start": start, "end": end}, Path(args["out"]) / f"{tag}-{world}.pt")
    local = [local_tensor(p.detach()) for p in trainer.params]
    return {
        "iterations": summary["iterations"],
        "sharded": trainer.sharded,
        "param_bytes": local_bytes(local),
    }


def main() -> None:
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_from_env()
    result = {"memory": memory, "train": train}[scenario](args)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.get('tag', scenario)}-rank{dist.rank()}-of-{dist.world_size()}.json").write_text(
        json.dumps(result)
    )
    if dist.is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
