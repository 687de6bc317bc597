"""The GPU suite's rollout comparison: dance's rollout and decode against the model's plain
diffusers pipeline (same network, steps, batch, resolution and prompt embeddings), interleaved."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from dance.models.bench_spec import BenchmarkSpec
from dance.training.trainer import Trainer

if TYPE_CHECKING:
    from gpu_suite_measure import SuiteContext


@contextlib.contextmanager
def on_device(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Modules (offloaded frozen parts) on the device for the pipeline's call, back after it."""
    from gpu_suite_measure import release  # gpu_suite_measure imports this module

    homes = [next(m.parameters()).device for m in modules]
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module, home in zip(modules, homes, strict=True):
            module.to(home)
        release(device)


def compare_with_diffusers(
    spec: BenchmarkSpec, ctx: SuiteContext, trainer: Trainer
) -> dict[str, Any]:
    """dance's rollout and decode against the pipeline's own __call__: same network, steps,
    batch and resolution, interleaved; prompt embeddings precomputed for both."""
    from gpu_suite_measure import timed, unit_prompts  # gpu_suite_measure imports this module

    policy, dev = trainer.policy, ctx.device
    b = min(trainer.cfg.rollout_batch_size, ctx.check_group)
    prompts = unit_prompts(spec, 1, "compare") * b
    pipe = spec.pipeline(policy)
    pipe.set_progress_bar_config(disable=True)
    kwargs = spec.pipeline_call(policy, trainer.recipe, prompts)
    policy.train(False)

    def ours() -> None:
        rollout = trainer.rollout(prompts, torch.arange(b), it=1)
        with torch.no_grad():
            policy.decode(rollout.reward_latents)

    # The pipeline computes as dance's update does: bf16 autocast on CUDA (a full fine-tune keeps
    # fp32 weights, which the pipeline would otherwise run in fp32).
    trained = getattr(policy, "trained", None)
    autocast = trained.autocast_context if trained is not None else contextlib.nullcontext

    def theirs() -> None:
        with torch.no_grad(), autocast():
            pipe(**kwargs, output_type="pt", generator=torch.Generator(dev).manual_seed(0))

    # Frozen parts that the policy offloads go to the device for each pipeline call, untimed
    # (dance's own decode moves its VAE over inside the timing, as it does in training).
    frozen = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]

    def theirs_timed() -> float:
        with on_device(frozen, dev):
            return timed(theirs, dev)[0]

    if ctx.tiny:  # warm-up; on the GPU the networks are warm from the units already
        ours(), theirs_timed()
    a, d = [], []
    for _ in range(ctx.repeats):  # interleaved, so drift in machine load hits both
        a.append(timed(ours, dev)[0])
        d.append(theirs_timed())
    dance_s, diffusers_s = statistics.median(a), statistics.median(d)
    return {
        "batch": b,
        "steps": trainer.schedule.num_steps,
        "dance_s": dance_s,
        "diffusers_s": diffusers_s,
        "ratio": dance_s / diffusers_s,
        "pipeline": type(pipe).__name__,
    }


def compare_estimate_s(ctx: SuiteContext, trainer: Trainer, units: dict[str, float]) -> float:
    """Seconds the diffusers comparison takes: both sides, every repeat (and the warm-up)."""
    b = min(trainer.cfg.rollout_batch_size, ctx.check_group)
    per_side = b * (
        trainer.schedule.num_steps * units["rollout_s_per_sample_step"]
        + units["decode_s_per_sample"]
    )
    return 2 * per_side * (ctx.repeats + (1 if ctx.tiny else 0))
