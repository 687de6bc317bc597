"""FSDP2 benchmark on a tiny FLUX checkpoint: 1 and 2 processes side by side in one run (gloo on
CPU, NCCL where GPUs are).

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py     # --repeats --width --layers

For a full fine-tune of the transformer, with the same global batch at both world sizes:

(a) per-rank bytes of the trained weights, their gradients (at the first optimizer step) and the
    AdamW states (after it), summed over each rank's local shards; target at 2 processes <= 0.55
    of 1 process;
(b) seconds per GRPO iteration (the slowest rank's mean over the timed iterations) and the ratio
    of 2 processes to 1. On a machine whose 2 CPU cores are shared, 2 processes compete for the
    same cores, so no speed-up is expected there: the ratio is reported, not targeted.

The driver starts ``torchrun --standalone --nproc-per-node N`` of this file for N = 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(args: argparse.Namespace) -> None:
    import dance
    import dance.distributed as dist
    from dance.cli.recipe import resolve
    from dance.registry import get_registry
    from dance.training.sharding import local_bytes
    from dance.training.trainer import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_from_env()
    raw = {
        "policy": {
            "name": "flux",
            "model": args.model,
            "height": 32,
            "width": 32,
            "max_sequence_length": 16,
            "finetune": "full",
        },
        "sampler": {"name": "dance-sde", "num_steps": 4},
        "rewards": [{"name": "jpeg-compressibility"}],
        "trainer": {
            "prompts_per_iteration": 2,
            "group_size": 4,  # 8 samples per iteration over all ranks
            "iterations": args.repeats + 1,
            "micro_batch_size": 4,
            "learning_rate": 1e-4,
            "sample_every": 0,
            "checkpoint_every": 0,
        },
    }
    runtime = dance.Runtime.auto()
    trainer = Trainer(resolve(raw, get_registry()), args.run_dir, runtime, get_registry())
    peak: dict[str, int] = {"param_bytes": local_bytes(trainer.params), "grad_bytes": 0}
    step = trainer._optimizer_step

    def measured_step(*args: object) -> float:
        grads = [p.grad for p in trainer.params if p.grad is not None]
        peak["grad_bytes"] = max(peak["grad_bytes"], local_bytes(grads))
        return step(*args)

    trainer._optimizer_step = measured_step  # type: ignore[method-assign]
    times = []
    for it in range(args.repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        trainer.iteration(it)
        dist.barrier()
        if it:  # the first iteration warms up (allocations, lazy FSDP init)
            times.append(time.perf_counter() - start)
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0]
    peak["optimizer_bytes"] = local_bytes(states)
    result = {**peak, "seconds_per_iteration": sum(times) / len(times), "sharded": trainer.sharded}
    out = Path(args.out) / f"rank{dist.rank()}-of-{dist.world_size()}.json"
    out.write_text(json.dumps(result))
    dist.end_process(0)


def launch(world: int, model: Path, out: Path, repeats: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={world}", __file__, "--worker", "--model", str(model)]
    cmd += ["--out", str(out), "--run-dir", str(out / "run"), "--repeats", str(repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{world} process(es) failed:\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}-of-{world}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per layout")
    parser.add_argument("--width", type=int, default=64, help="tiny FLUX hidden size")
    parser.add_argument("--layers", type=int, default=2, help="double and single blocks each")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from dance_flux.tiny import build_tiny_flux

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_flux(
            Path(tmp) / "flux",
            num_layers=args.layers,
            num_single_layers=args.layers,
            width=args.width,
        )
        results = {w: launch(w, model, Path(tmp) / f"w{w}", args.repeats) for w in (1, 2)}
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"tiny FLUX (width {args.width}, {args.layers}+{args.layers} blocks), full fine-tune, "
        f"8 samples x 4 steps per iteration, OMP_NUM_THREADS={threads}, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'per rank':<26}{'1 process':>14}{'2 processes':>14}{'ratio':>8}")
    for key, label in (
        ("param_bytes", "trained weights (bytes)"),
        ("grad_bytes", "gradients (bytes)"),
        ("optimizer_bytes", "AdamW states (bytes)"),
    ):
        one, two = results[1][0][key], max(r[key] for r in results[2])
        print(f"{label:<26}{one:>14,}{two:>14,}{two / one:>8.3f}")
    one = results[1][0]["seconds_per_iteration"]
    two = max(r["seconds_per_iteration"] for r in results[2])
    print(f"{'seconds per iteration':<26}{one:>14.3f}{two:>14.3f}{two / one:>8.3f}")
    print(
        "memory target: <= 0.55 at 2 processes. Time: 2 processes share this machine's cores, "
        "so no speed-up is expected on CPU."
    )


if __name__ == "__main__":
    main()
