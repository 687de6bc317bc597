"""Best-of-N training cost, measured side by side in one run on a tiny FLUX checkpoint.

    python benchmarks/bench_best_of_n.py

Rolls out groups of N samples and updates on k of each group (trainer.train_per_group), for
k = N (every sample), N/2 and N/4. The rollout and reward phases see all N samples either way; the
update phase should cost about k/N of training on every sample. Printed: the median update-phase
time of each setting and its ratio to k = N, next to k/N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench_grpo, next to this file


def build_trainer(model: Path, args: argparse.Namespace, out: Path, k: int):
    """bench_grpo's trainer (same model settings), with N per group and k trained per group."""
    from bench_grpo import build_trainer as grpo_trainer

    layout = argparse.Namespace(
        size=args.size,
        steps=args.steps,
        batch=args.prompts * args.group,
        group=args.group,
        device=args.device,
    )
    return grpo_trainer(
        model,
        layout,
        out,
        train_per_group=0 if k == args.group else k,
        share_initial_noise=False,
        micro_batch_size=args.micro_batch,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=16, help="N, samples rolled out per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--micro-batch", type=int, default=16, help="pairs per update forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    settings = [args.group, args.group // 2, args.group // 4]
    with tempfile.TemporaryDirectory() as tmp:
        from dance_flux.tiny import build_tiny_flux

        model = build_tiny_flux(
            Path(tmp) / "tiny-flux", seed=0, num_layers=2, num_single_layers=2, width=64
        )
        trainers = {k: build_trainer(model, args, Path(tmp) / f"k{k}", k) for k in settings}
        for trainer in trainers.values():  # warm-up
            trainer.iteration(0)
        times: dict[int, list[float]] = {k: [] for k in settings}
        rollout: dict[int, list[float]] = {k: [] for k in settings}
        for it in range(1, args.repeats + 1):  # interleaved, so machine load hits all settings
            for k, trainer in trainers.items():
                metrics = trainer.iteration(it)
                times[k].append(metrics["time/update"])
                rollout[k].append(metrics["time/rollout"])

    base = statistics.median(times[args.group])
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(
        f"setting: {args.prompts} prompts x N = {args.group} samples, {args.steps} steps, "
        f"{args.size}x{args.size}, micro-batch {args.micro_batch}, median of {args.repeats}"
    )
    header = ("k trained per group", "update s", "rollout s", "update / k=N", "k/N")
    print(f"{header[0]:<22}{header[1]:>10}{header[2]:>11}{header[3]:>14}{header[4]:>7}")
    for k in settings:
        update = statistics.median(times[k])
        print(
            f"{k:<22}{update:>10.3f}{statistics.median(rollout[k]):>11.3f}"
            f"{update / base:>14.3f}{k / args.group:>7.3f}"
        )


if __name__ == "__main__":
    main()
