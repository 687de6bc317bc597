"""GRPO benchmark on a tiny FLUX checkpoint, measured side by side in one run.

    python benchmarks/bench_grpo.py            # CPU here; CUDA where available

(a) rollout: dance's rollout (SDE steps with log-probs, trajectory stored, decode) divided by
    diffusers' plain FluxPipeline for the same modules, steps, batch and resolution; target <= 1.10.
(b) update: the batched update over (sample, step) pairs divided by updating the same pairs one
    sample at a time (DanceGRPO's layout); target <= 0.30.
(c) peak memory of one whole iteration (CUDA: max allocated; CPU: peak RSS of a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build_trainer(model: Path, args: argparse.Namespace, out: Path, **trainer):
    import dance
    from dance.cli.recipe import resolve
    from dance.registry import get_registry
    from dance.training.trainer import Trainer

    raw = {
        "policy": {
            "name": "flux",
            "model": str(model),
            "height": args.size,
            "width": args.size,
            "max_sequence_length": 32,
            "lora_rank": 8,
            "lora_alpha": 16.0,
        },
        "sampler": {"name": "dance-sde", "num_steps": args.steps},
        "rewards": [{"name": "jpeg-compressibility"}],
        "trainer": {
            "prompts_per_iteration": args.batch // args.group,
            "group_size": args.group,
            "rollout_batch_size": args.batch,
            "sample_every": 0,
            **trainer,
        },
    }
    runtime = dance.Runtime.auto(args.device)
    return Trainer(resolve(raw, get_registry()), out, runtime, get_registry())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_rollout(trainer, args) -> tuple[float, float]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    policy, device = trainer.policy, trainer.runtime.device
    # The same modules (LoRA included) in a plain pipeline: only the sampling code differs.
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        transformer=policy.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = trainer.prompts.next(args.batch // args.group)
    batch = [p for p in prompts for _ in range(args.group)]
    index = torch.arange(args.batch)

    def ours():
        rollout = trainer.rollout(batch, index, it=0)
        with torch.no_grad():
            policy.decode(rollout.reward_latents)

    def theirs():
        pipe(
            prompt=[p.text for p in batch],
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            guidance_scale=3.5,
            max_sequence_length=32,
            output_type="pt",
            generator=torch.Generator(device).manual_seed(0),
        )

    ours(), theirs()  # warm-up
    a, b = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both
        a.append(timed(ours, device))
        b.append(timed(theirs, device))
    return statistics.median(a), statistics.median(b)


def bench_update(model: Path, args, out: Path) -> tuple[float, float, int]:
    times = {}
    pairs = 0
    for label, micro in (("batched", args.micro_batch), ("one_at_a_time", 1)):
        trainer = build_trainer(model, args, out / label, micro_batch_size=micro)
        prompts = trainer.prompts.next(args.batch // args.group)
        batch = [p for p in prompts for _ in range(args.group)]
        rollout = trainer.rollout(batch, torch.arange(args.batch), it=0)
        advantages = torch.randn(args.batch, generator=torch.Generator().manual_seed(0))
        advantages = advantages.to(trainer.runtime.device)
        trained = torch.ones(args.batch, dtype=torch.bool)  # [B] every sample trains
        trainer.policy.train(True)
        trainer.update(rollout, advantages, trained, it=0)  # warm-up (the same pairs every call)
        samples = [
            timed(
                lambda t=trainer, r=rollout, a=advantages, m=trained: t.update(r, a, m, it=0),
                trainer.runtime.device,
            )
            for _ in range(args.repeats)
        ]
        times[label] = statistics.median(samples)
        pairs = args.batch * max(1, int(0.6 * (args.steps - 1)))
    return times["batched"], times["one_at_a_time"], pairs


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child_memory(model: Path, args) -> dict:
    """One iteration in this fresh process: resident memory after setup, and the iteration's peak
    (Linux: the high-water mark is reset after setup through /proc/self/clear_refs)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(model, args, Path(tmp), micro_batch_size=args.micro_batch)
        device = trainer.runtime.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        setup_rss = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        trainer.iteration(0)
        result = {"setup_rss_mb": setup_rss, "iteration_peak_rss_mb": _status_mb("VmHWM")}
        if device.type == "cuda":
            result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="sampling steps")
    parser.add_argument("--batch", type=int, default=16, help="samples per iteration")
    parser.add_argument("--group", type=int, default=4, help="group size")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--micro-batch", type=int, default=32, help="pairs per update forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", type=Path, default=None, help="existing checkpoint to use")
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)

    if args.child_memory:
        print(json.dumps(child_memory(args.model, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from dance_flux.tiny import build_tiny_flux

            # DESIGN.md's benchmark model: 2 double + 2 single blocks, width 64.
            model = build_tiny_flux(
                tmp / "tiny-flux", seed=0, num_layers=2, num_single_layers=2, width=64
            )
        trainer = build_trainer(model, args, tmp / "rollout")
        device = trainer.runtime.device
        ours, theirs = bench_rollout(trainer, args)
        batched, single, pairs = bench_update(model, args, tmp / "update")
        child = subprocess.run(
            [sys.executable, __file__, "--child-memory", "--model", str(model)]
            + sum(
                [
                    [f"--{k.replace('_', '-')}", str(v)]
                    for k, v in vars(args).items()
                    if k not in ("model", "child_memory") and v is not None
                ],
                [],
            ),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1])

    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(
        f"setting: {args.batch} samples (groups of {args.group}), {args.steps} steps, "
        f"{args.size}x{args.size}, {pairs} trained (sample, step) pairs, micro-batch "
        f"{args.micro_batch}, median of {args.repeats}"
    )
    rollout_ratio = ours / theirs
    update_ratio = batched / single
    rows = [
        ("(a) rollout / FluxPipeline", f"{ours:.3f} s / {theirs:.3f} s", rollout_ratio, 1.10),
        (
            "(b) batched / one-at-a-time update",
            f"{batched:.3f} s / {single:.3f} s",
            update_ratio,
            0.30,
        ),
    ]
    for name, detail, ratio, target in rows:
        verdict = "meets" if ratio <= target else "MISSES"
        print(f"{name:<38} {ratio:6.3f}  ({detail}; target <= {target:.2f}: {verdict})")
    print(
        f"(c) peak memory of one iteration: {memory['iteration_peak_rss_mb']:.0f} MB RSS "
        f"(resident after setup {memory['setup_rss_mb']:.0f} MB, so the iteration adds "
        f"{memory['iteration_peak_rss_mb'] - memory['setup_rss_mb']:.0f} MB)"
        + (
            f", CUDA max allocated {memory['cuda_max_allocated_mb']:.0f} MB"
            if "cuda_max_allocated_mb" in memory
            else ""
        )
    )


if __name__ == "__main__":
    main()
