"""One policy of the GPU suite: build it with random weights, measure the per-unit figures, check
that they predict a real iteration, compute the published setting from them, and compare the
rollout with the plain diffusers pipeline. See gpu_suite.py for what the figures mean."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from gpu_suite_compare import compare_estimate_s, compare_with_diffusers
from torch.utils.flop_counter import FlopCounterMode

import dance
from dance.cli.recipe import read_recipe, resolve
from dance.interfaces import Prompt, Rollout
from dance.models.bench_spec import BenchmarkSpec
from dance.models.random_weights import random_weights, write_random_layout
from dance.sampling.generate import denoise
from dance.training.layout import SampleLayout
from dance.training.trainer import Trainer

GIB = 2**30
CHECK_TOLERANCE = 0.15


@dataclasses.dataclass
class SuiteContext:
    """What every policy's measurement shares."""

    root: Path  # scratch folder of the run
    device: torch.device
    tiny: bool
    registry: Any
    rewards: Any  # gpu_suite_rewards.RewardFiles
    peak_flops: float | None  # the device's peak bf16 FLOP/s, None when unknown
    check_group: int  # group size of the check iteration
    check_steps: int  # most trained steps per sample in the check iteration
    repeats: int  # timed repeats of each unit (median)
    deadline: float  # time.perf_counter() value the run must end by


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def count_flops(fn: Callable[[], Any]) -> tuple[float, Any]:
    """FLOPs that torch.utils.flop_counter counts while ``fn`` runs (matmuls, convolutions,
    attention; elementwise work is not counted, by convention)."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return float(counter.get_total_flops()), out


def memory_snapshot(device: torch.device) -> dict[str, Any]:
    """Peak GPU memory since the last reset (CUDA), and the process's peak resident memory."""
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
    if device.type != "cuda":
        return {
            "cuda": False,
            "max_allocated_gib": None,
            "max_reserved_gib": None,
            "host_peak_rss_gib": rss_gib,
        }
    return {
        "cuda": True,
        "max_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "max_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        "host_peak_rss_gib": rss_gib,
    }


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or a CUDA library's out-of-memory RuntimeError."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def oom_figures(device: torch.device, exc: BaseException) -> dict[str, Any]:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    out: dict[str, Any] = {"status": "out of memory", "detail": first[:300]}
    if device.type == "cuda":
        out["max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        out["total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return out


def reset_peak(device: torch.device) -> int | None:
    """Reset the peak-memory counter; returns the bytes allocated now (None on a CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_above(device: torch.device, start: int | None) -> float | None:
    """GiB the peak rose above ``start`` (from :func:`reset_peak`)."""
    if start is None:
        return None
    return (torch.cuda.max_memory_allocated(device) - start) / GIB


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- setting ----------------------------------------------------------------------------------


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    section, _, field = key.partition(".")
    raw.setdefault(section, {})[field] = value


def published_setting(spec: BenchmarkSpec, recipe: Any) -> dict[str, Any]:
    """The published per-GPU setting, read from the resolved recipe (spec overrides applied)."""
    p, s, t = recipe.policy_options, recipe.sampler_options, recipe.trainer
    steps = int(s.get("num_steps"))
    o = recipe.objective_options
    trainable_steps = steps - (0 if o.get("train_last_step") else 1)
    per_sample = max(1, int(o.get("timestep_fraction", 1.0) * trainable_steps))
    group = t.group_size
    return {
        "height": p.get("height"),
        "width": p.get("width"),
        "num_frames": p.get("num_frames"),
        "steps": steps,
        "eta": s.get("eta"),
        "shift": s.get("shift"),
        "guidance": p.get("guidance", p.get("guidance_scale")),
        "cfg_scale": p.get("cfg_scale", p.get("guidance_scale")),
        "group_size": group,
        "prompts_per_gpu": spec.prompts_per_gpu,
        "samples_per_gpu": spec.prompts_per_gpu * group,
        "trained_samples_per_gpu": spec.prompts_per_gpu * (t.train_per_group or group),
        "trained_steps_per_sample": per_sample,
        "rollout_batch_size": t.rollout_batch_size,
        "micro_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "old_log_probs": recipe.objective_options.get("old_log_probs"),
        "finetune": p.get("finetune", "lora"),
        "lora_rank": p.get("lora_rank") if p.get("finetune", "lora") == "lora" else None,
        "gradient_checkpointing": p.get("gradient_checkpointing"),
        "rewards": [r.label for r in recipe.rewards],
        "source": spec.setting_source,
    }


def write_model(spec: BenchmarkSpec, ctx: SuiteContext) -> Path:
    """The policy's checkpoint folder with random weights: the tiny builder's layout, with the
    full-size published configs unless --tiny."""
    folder = ctx.root / f"{spec.policy}-model"
    if not folder.is_dir():
        spec.build_tiny(folder)
        configs = None if ctx.tiny else spec.full_configs()
        write_random_layout(folder, configs, None if ctx.tiny else spec.config_sources)
        for name, source in ({} if ctx.tiny else spec.full_files).items():
            if not (folder / name).is_file():
                raise ValueError(f"policy '{spec.policy}': {folder} has no {name} to replace")
            (folder / name).write_text(Path(source).read_text())
    return folder


def write_image_prompts(ctx: SuiteContext, count: int = 4) -> Path:
    """A JSONL prompt file whose prompts each carry a random conditioning image (PNG)."""
    from PIL import Image

    folder = ctx.root / "i2v-prompts"
    if not folder.is_dir():
        folder.mkdir()
        gen = torch.Generator().manual_seed(0)
        lines = []
        for k in range(count):
            pixels = torch.randint(0, 256, (96, 160, 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"image-{k}.png")
            entry = {"prompt": f"a benchmark scene {k}", "image": f"image-{k}.png"}
            lines.append(json.dumps(entry))
        (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "prompts.jsonl"


def build_recipes(
    spec: BenchmarkSpec, ctx: SuiteContext, model: Path, extra: dict[str, Any]
) -> tuple[Any, Any]:
    """(published recipe, check-iteration recipe): the bundled recipe with the spec's overrides
    (tiny ones with --tiny) and ``extra``; the check recipe draws one prompt, ``check_group``
    samples, and trains at most ``check_steps`` steps of each."""
    raw = read_recipe(spec.recipe)
    raw.pop("evaluation", None)
    for key, value in {**spec.overrides, **(spec.tiny_overrides if ctx.tiny else {})}.items():
        set_dotted(raw, key, value)
    for key, value in extra.items():
        set_dotted(raw, key, value)
    raw["policy"]["model"] = str(model)
    raw["rewards"] = ctx.rewards.prepare(raw["rewards"])
    if spec.needs_image:
        raw["trainer"]["prompts"] = str(write_image_prompts(ctx))
    published = resolve(copy.deepcopy(raw), ctx.registry)
    setting = published_setting(spec, published)
    trainable = setting["steps"] - (0 if published.objective_options.get("train_last_step") else 1)
    per_sample = min(setting["trained_steps_per_sample"], ctx.check_steps)
    fraction = 1.0 if per_sample >= trainable else (per_sample + 0.5) / trainable
    check = {
        "prompts_per_iteration": 1,
        "group_size": ctx.check_group,
        "train_per_group": 0,
        "iterations": 1,
        "sample_every": 0,
        "checkpoint_every": 0,
        # Random weights could give a non-finite score; the work done is the same either way, so
        # such samples are left out (and counted in the report) rather than stopping the suite.
        "on_reward_failure": "exclude",
    }
    raw["trainer"].update(check)
    raw.setdefault("objective", {})["timestep_fraction"] = fraction
    return published, resolve(raw, ctx.registry)


# ---- the units --------------------------------------------------------------------------------


def unit_prompts(spec: BenchmarkSpec, count: int, tag: str) -> list[Prompt]:
    """Prompts no iteration draws (so encoding them is never a cache hit by accident)."""
    gen = torch.Generator().manual_seed(len(tag))
    return [
        Prompt(
            f"benchmark unit prompt {tag} {k}",
            image=torch.rand(3, 96, 160, generator=gen) if spec.needs_image else None,
        )
        for k in range(count)
    ]


@contextlib.contextmanager
def trainer_settings(trainer: Trainer, **changes: Any) -> Iterator[None]:
    saved = trainer.cfg
    trainer.cfg = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        trainer.cfg = saved


@contextlib.contextmanager
def one_unit_per_sample(trainer: Trainer) -> Iterator[None]:
    """Train one step of each sample."""
    objective = trainer.objective
    real = objective.train_units
    objective.train_units = lambda rollout: (real(rollout)[0], 1)  # type: ignore[method-assign]
    try:
        yield
    finally:
        objective.train_units = real  # type: ignore[method-assign]


@contextlib.contextmanager
def sample_layout(trainer: Trainer, layout: SampleLayout) -> Iterator[None]:
    """Train on a batch of another size than the recipe's iteration (one process)."""
    saved = trainer.layout
    trainer.layout = layout
    try:
        yield
    finally:
        trainer.layout = saved


def measure_units(spec: BenchmarkSpec, ctx: SuiteContext, trainer: Trainer) -> dict[str, Any]:
    """Seconds per prompt encoded, per (sample, step) of the rollout, per sample decoded and
    scored, per trained (sample, step) pair; FLOPs of the forward and of the update."""
    policy, dev, cfg = trainer.policy, ctx.device, trainer.cfg
    schedule = trainer.schedule
    steps = schedule.num_steps
    policy.train(False)

    # Encoding one new prompt (and its image): after a warm-up on another one.
    warm, fresh = unit_prompts(spec, 1, "warm"), unit_prompts(spec, ctx.repeats, "fresh")
    policy.encode(warm)
    encode_s = statistics.median(timed(lambda p=p: policy.encode([p]), dev)[0] for p in fresh)

    # Rollout: dance's sampling loop (denoise) over a batch of the rollout batch size; the first
    # step warms up and is counted by the FLOP counter, the next ones are timed.
    b = min(cfg.rollout_batch_size, ctx.check_group)
    prompts = warm * b
    cond = policy.encode(prompts)
    noise = trainer.initial_noise(torch.arange(b), it=0)  # [b, *L]
    gen = torch.Generator(dev).manual_seed(0)
    timed_steps = max(1, min(steps - 1, 3))
    with torch.no_grad():
        loop = denoise(policy, trainer.sampler, schedule, noise, cond, gen)
        forward_flops, first = count_flops(lambda: next(loop))
        step_times = [timed(lambda: next(loop), dev)[0] for _ in range(timed_steps)]
    rollout_s = statistics.median(step_times) / b
    forward_flops_per_sample = forward_flops / b

    # Decode and reward, per sample: warm-up on one sample, timed on check_group samples.
    n = ctx.check_group
    latents = first.x0[:1].expand(n, *first.x0.shape[1:]).contiguous()  # [n, *L]
    texts = (warm * n)[:n]
    # The decoder's own peak memory for 1 and for n samples tells how it grows with the batch.
    with torch.no_grad():
        start = reset_peak(dev)
        trainer.score(policy.decode(latents[:1]), texts[:1])
        decode_peak_1 = peak_above(dev, start)
        start = reset_peak(dev)
        decode_t, media = timed(lambda: policy.decode(latents), dev)
        decode_peak_n = peak_above(dev, start)
        reward_t, _ = timed(lambda: trainer.score(media, texts), dev)

    # Update: one micro-batch of m pairs (one step of each of m samples) through the trainer's own
    # update; the warm-up call is the one the FLOP counter sees.
    m = cfg.micro_batch_size
    traj = noise[:1].unsqueeze(1).expand(m, steps + 1, *noise.shape[1:]).contiguous()
    rollout = Rollout(
        sampler=trainer.sampler,
        schedule=trainer.schedule,
        cond=policy.encode(warm * m),
        samples=traj[:, -1],
        reward_latents=traj[:, -1],
        trajectory=traj,  # [m, N + 1, *L]
        log_probs=torch.zeros(m, steps, device=dev),
    )
    advantages = torch.linspace(-1.0, 1.0, m, device=dev)  # [m], non-zero loss
    policy.train(True)
    trained = torch.ones(m, dtype=torch.bool)  # [m] every sample trains
    with (
        trainer_settings(trainer, gradient_accumulation_steps=0),
        one_unit_per_sample(trainer),
        sample_layout(trainer, SampleLayout(m)),  # the update's batch is these m samples
    ):
        update_flops, _ = count_flops(lambda: trainer.update(rollout, advantages, trained, it=0))
        update_t = median_time(
            lambda: trainer.update(rollout, advantages, trained, it=0), dev, ctx.repeats
        )
    policy.train(False)
    release(dev)

    checkpointing = bool(trainer.recipe.policy_options.get("gradient_checkpointing"))
    counted_per_pair = update_flops / m
    # Model FLOPs leave out the forward that gradient checkpointing recomputes in the backward.
    model_per_pair = counted_per_pair - (forward_flops_per_sample if checkpointing else 0.0)
    units = {
        "encode_s_per_prompt": encode_s,
        "rollout_s_per_sample_step": rollout_s,
        "decode_s_per_sample": decode_t / n,
        "reward_s_per_sample": reward_t / n,
        "update_s_per_pair": update_t / m,
    }
    decode_memory = {"samples": n, "peak_gib_1": decode_peak_1, "peak_gib_n": decode_peak_n}
    flops = {
        "forward_per_sample": forward_flops_per_sample,
        "update_counted_per_pair": counted_per_pair,
        "update_model_per_pair": model_per_pair,
        "rollout_batch": b,
        "micro_batch": m,
    }
    peak = ctx.peak_flops
    flops["update_mfu"] = model_per_pair / units["update_s_per_pair"] / peak if peak else None
    flops["update_hfu"] = counted_per_pair / units["update_s_per_pair"] / peak if peak else None
    flops["rollout_mfu"] = forward_flops_per_sample / rollout_s / peak if peak else None
    return {"units": units, "flops": flops, "decode_memory": decode_memory}


def predict(units: dict[str, float], prompts: int, samples: int, steps: int, pairs: int) -> float:
    """Seconds of an iteration from the per-unit figures."""
    return (
        prompts * units["encode_s_per_prompt"]
        + samples * steps * units["rollout_s_per_sample_step"]
        + samples * (units["decode_s_per_sample"] + units["reward_s_per_sample"])
        + pairs * units["update_s_per_pair"]
    )


def check_iteration(ctx: SuiteContext, trainer: Trainer, units: dict[str, float]) -> dict[str, Any]:
    """One real Trainer.iteration at the check recipe's size, against the prediction."""
    cfg = trainer.cfg
    samples = cfg.prompts_per_iteration * cfg.group_size
    # GRPO's units follow the sampler alone: a rollout with nothing else in it tells them.
    empty = Rollout(trainer.sampler, trainer.schedule, None, None, None)  # type: ignore[arg-type]
    per_sample = trainer.objective.train_units(empty)[1]
    pairs = samples * per_sample
    steps = trainer.schedule.num_steps
    predicted = predict(units, cfg.prompts_per_iteration, samples, steps, pairs)
    release(ctx.device)
    start = reset_peak(ctx.device)
    measured, metrics = timed(lambda: trainer.iteration(0), ctx.device)
    error = measured / predicted - 1.0
    return {
        "prompts": cfg.prompts_per_iteration,
        "samples": samples,
        "trained_pairs": pairs,
        "measured_s": measured,
        "predicted_s": predicted,
        "error": error,
        "within_tolerance": abs(error) <= CHECK_TOLERANCE,
        "tolerance": CHECK_TOLERANCE,
        "phases_s": {k[len("time/") :]: v for k, v in metrics.items() if k.startswith("time/")},
        "excluded_samples": int(metrics.get("excluded_samples", 0)),
        "memory": memory_snapshot(ctx.device),
        "allocated_at_start_gib": None if start is None else start / GIB,
    }


def computed_full(
    setting: dict[str, Any],
    units: dict[str, float],
    check: dict[str, Any],
    decode_memory: dict[str, Any],
    trainer: Trainer,
) -> dict[str, Any]:
    """The published per-GPU iteration computed from the per-unit figures (not measured)."""
    samples = setting["samples_per_gpu"]
    trained = setting["trained_samples_per_gpu"]
    pairs = trained * setting["trained_steps_per_sample"]
    seconds = predict(units, setting["prompts_per_gpu"], samples, setting["steps"], pairs)
    # Pairs past the first optimizer step get their old log-probs from an extra forward without
    # gradients (trainer.old_log_probs = "recompute"), priced as a rollout forward; windows are
    # counted per GPU, as the trainer counts micro-batches per process.
    micro = setting["micro_batch_size"]
    window_pairs = (setting["gradient_accumulation_steps"] * micro) or pairs
    recomputed = max(0, pairs - window_pairs) if setting["old_log_probs"] == "recompute" else 0
    seconds += recomputed * units["rollout_s_per_sample_step"]
    out = {
        "label": "computed from the per-unit figures, not measured",
        "samples": samples,
        "trained_pairs": pairs,
        "recomputed_old_log_prob_pairs": recomputed,
        "seconds_per_iteration": seconds,
        "samples_per_gpu_second": samples / seconds,
    }
    # Memory: the larger of (a) the check iteration's peak plus the trajectories of the extra
    # samples (fp32, every step kept; with Best-of-N also the copy of the trained ones) and
    # (b) what was allocated when the iteration started, all trajectories, and the decoder's
    # peak grown linearly from 1 to n samples (a policy that decodes in chunks needs less).
    latent = trainer.policy.initial_noise(1, None)
    trajectory_gib = latent.numel() * 4 * (setting["steps"] + 1) / GIB
    out["trajectory_gib_per_sample"] = trajectory_gib
    copies = samples + (trained if trained < samples else 0)
    allocated = check["memory"]["max_allocated_gib"]
    if allocated is None:
        out["max_allocated_gib"] = None
        return out
    from_check = allocated + (copies - check["samples"]) * trajectory_gib
    d1, dn, n = decode_memory["peak_gib_1"], decode_memory["peak_gib_n"], decode_memory["samples"]
    decode_full = d1 + max(0.0, dn - d1) / max(1, n - 1) * (samples - 1)
    from_decode = check["allocated_at_start_gib"] + copies * trajectory_gib + decode_full
    out["max_allocated_gib"] = max(from_check, from_decode)
    out["decode_peak_gib"] = decode_full
    return out


# ---- one policy -------------------------------------------------------------------------------


def parameter_counts(trainer: Trainer) -> dict[str, int]:
    policy = trainer.policy
    trained = {id(p) for m in policy.trainable_modules() for p in m.parameters()}
    network = sum(p.numel() for m in policy.trainable_modules() for p in m.parameters())
    frozen = 0
    for value in vars(policy).values():
        if isinstance(value, torch.nn.Module):
            frozen += sum(p.numel() for p in value.parameters() if id(p) not in trained)
    return {
        "trained_network": network,
        "trainable": sum(p.numel() for p in policy.trainable_parameters()),
        "frozen_encoders_and_vae": frozen,
    }


def measure_policy(spec: BenchmarkSpec, ctx: SuiteContext, extra: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one policy with the recipe options ``extra`` (memory variants)."""
    model = write_model(spec, ctx)
    published, check_recipe = build_recipes(spec, ctx, model, extra)
    setting = published_setting(spec, published)
    runtime = dance.Runtime.auto(str(ctx.device))
    release(ctx.device)
    reset_peak(ctx.device)
    start = time.perf_counter()
    with random_weights(ctx.device):
        trainer = Trainer(check_recipe, ctx.root / f"{spec.policy}-run", runtime, ctx.registry)
    sync(ctx.device)
    result: dict[str, Any] = {
        "setting": setting,
        "build_s": time.perf_counter() - start,
        "parameters": parameter_counts(trainer),
        "memory_after_build": memory_snapshot(ctx.device),
    }
    try:
        result.update(measure_units(spec, ctx, trainer))
        units = result["units"]
        result["check"] = check_iteration(ctx, trainer, units)
        result["memory"] = result["check"]["memory"]
        result["computed_full_setting"] = computed_full(
            setting, units, result["check"], result["decode_memory"], trainer
        )
        left = ctx.deadline - time.perf_counter()
        needed = compare_estimate_s(ctx, trainer, units)
        if spec.pipeline is None or spec.pipeline_call is None:
            result["vs_diffusers"] = {"skipped": "the policy names no diffusers pipeline"}
        elif needed > left:
            result["vs_diffusers"] = {
                "skipped": f"needs about {needed:.0f} s, {left:.0f} s of the budget left"
            }
        else:
            try:
                result["vs_diffusers"] = compare_with_diffusers(spec, ctx, trainer)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                # The pipeline holds every frozen part on the device at once; dance's own
                # figures above stand.
                result["vs_diffusers"] = {
                    "skipped": "the pipeline ran out of GPU memory",
                    **oom_figures(ctx.device, exc),
                }
    finally:
        del trainer
        release(ctx.device)
    return result
