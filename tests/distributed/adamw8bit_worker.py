"""trainer.optimizer=adamw8bit on FSDP2 shards, one process per rank (gloo, bitsandbytes' CPU
kernels), started by test_adamw8bit.py:

    python -m torch.distributed.run --standalone --nproc-per-node N adamw8bit_worker.py ARGS_JSON

``args["resume"]`` false: three optimizer steps on a two-layer network, then a dance checkpoint;
true: load that checkpoint (written at any number of processes) into other weights, then one
step. Rank 0 writes the gathered weights and AdamW moments to ``args["out"]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

import dance.distributed as dist
from dance.training.adamw8bit import AdamW8bitShards
from dance.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint


class Stub:
    """The part of a policy that checkpoints call."""

    name = "two-layers"

    def save_trained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def snapshot(model: torch.nn.Module, optimizer: AdamW8bitShards) -> dict[str, Any]:
    state = optimizer.state_dict()["state"]
    sharded = [isinstance(s["exp_avg"], DTensor) for s in state.values()]
    return {
        "weights": [full(p) for p in model.parameters()],
        "exp_avg": [full(state[i]["exp_avg"]) for i in sorted(state)],
        "exp_avg_sq": [full(state[i]["exp_avg_sq"]) for i in sorted(state)],
        "step": [float(state[i]["step"]) for i in sorted(state)],
        "sharded_states": all(sharded) and bool(sharded),
    }


def step(model: torch.nn.Module, optimizer: AdamW8bitShards, n: int) -> None:
    x = torch.linspace(-1, 1, 8 * 16).view(8, 16) * (n + 1)  # [8, 16], the same on every rank
    # Each rank's loss is divided by the world size, as gradients are summed over ranks.
    (model(x).square().mean() / dist.world_size()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_from_env()
    torch.manual_seed(1 if args["resume"] else 0)  # a resume starts from other weights
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 30))
    if dist.world_size() > 1:  # dance's sharding: per layer, then the root; gradients summed
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.world_size(),))
        for module in (model[0], model[2], model):
            fully_shard(module, mesh=mesh)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    params = list(model.parameters())
    optimizer = AdamW8bitShards(
        params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2, min_8bit_size=64
    )
    training = TrainingState([model], params, optimizer, None)
    run_dir = Path(args["run_dir"])
    result: dict[str, Any] = {}
    if args["resume"]:
        load_checkpoint(run_dir / "checkpoints" / "iter-000003", Stub(), training)
        result["loaded"] = snapshot(model, optimizer)
        step(model, optimizer, 3)
        result["after"] = snapshot(model, optimizer)
    else:
        for n in range(3):
            step(model, optimizer, n)
        result["saved"] = snapshot(model, optimizer)
        save_checkpoint(run_dir, 3, Stub(), training, {"iteration": 3}, keep=1)
        step(model, optimizer, 3)
        result["after"] = snapshot(model, optimizer)
    if dist.is_main():
        out = Path(args["out"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(result, out / f"{args['tag']}.pt")
    dist.end_process(0)


if __name__ == "__main__":
    main()
