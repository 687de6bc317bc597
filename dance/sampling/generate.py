"""Generation without training: `dance sample`, evaluation, and Best-of-N build on this."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dance.interfaces import Conditioning, Policy, Prompt, Sampler, Schedule, StepOutput
from dance.sampling.gaussian import draw_noise
from dance.video.mp4 import DEFAULT_FPS, write_mp4


def noise_from_seeds(policy: Policy, seeds: list[int]) -> torch.Tensor:
    """Initial latents ``[n, *L]``, each drawn from its own seeded generator, so a sample's noise
    does not depend on the batch (or the rank) it is drawn in."""
    device = policy.runtime.device
    return torch.cat(
        [policy.initial_noise(1, torch.Generator(device).manual_seed(s)) for s in seeds]
    )


def denoise(
    policy: Policy,
    sampler: Sampler,
    schedule: Schedule,
    x: torch.Tensor,
    cond: Conditioning,
    generator: torch.Generator | Sequence[torch.Generator] | BatchNoise | None = None,
    deterministic: bool = False,
) -> Iterator[StepOutput]:
    """The sampling loop: yield every step's output, starting from latents ``x [b, *L]``.

    ``generator`` is one generator for the batch (the sampler draws from it), or one per sample
    (``b`` of them): then sample ``i``'s noise at every step comes from generator ``i`` alone,
    so it does not depend on the batch, nor on the rank, the sample is drawn in; or a
    :class:`BatchNoise`: these rows of one draw for a whole batch at every step.
    """
    b = x.shape[0]
    batch_noise = generator if isinstance(generator, BatchNoise) else None
    if batch_noise is not None:
        generator = None
        shared_gen = torch.Generator(x.device).manual_seed(batch_noise.seed)
    per_sample = generator is not None and not isinstance(generator, torch.Generator)
    if per_sample and len(generator) != b:  # type: ignore[arg-type]
        raise ValueError(f"{len(generator)} generators for {b} samples")  # type: ignore[arg-type]
    # Rows can repeat (a group's shared noise and prompt) only up to the first step that draws
    # noise; deduplicating costs a host sync per step, so it stops there (known up front).
    noisy = sampler.noisy_steps(schedule).cpu()  # [N] bool
    stochastic = sampler.stochastic and not deterministic and bool(noisy.any())
    last_dedup = int(noisy.nonzero()[0]) if stochastic else -1
    multistep = sampler.uses_previous_step()
    out: StepOutput | None = None
    for k in range(schedule.num_steps):
        t = schedule.timesteps[k].expand(b)  # [b]
        k_idx = torch.full((b,), k, dtype=torch.long, device=x.device)
        # A multistep solver (DPM-Solver++(2M) after MixGRPO-Flash's window) also reads the step
        # before's output; every other sampler's step is a function of this step alone.
        extra = {"previous": out} if multistep and k > 0 else {}
        predict = predict_distinct if k <= last_dedup else _predict
        v = predict(policy, x, t, cond)  # [b, *L]
        if batch_noise is not None and sampler.stochastic and not deterministic:
            every = x.new_empty((batch_noise.total, *x.shape[1:]))  # [total, *L]
            z = draw_noise(every, shared_gen)[batch_noise.local_rows().to(x.device)]  # [b, *L]
            out = step_with_noise(sampler, v, x, k_idx, schedule, z, **extra)
        elif per_sample and sampler.stochastic and not deterministic:
            out = step_per_sample(sampler, v, x, k_idx, schedule, generator, **extra)  # type: ignore[arg-type]
        else:
            shared = None if per_sample else generator
            out = sampler.step(
                v, x, k_idx, schedule, generator=shared, deterministic=deterministic, **extra
            )
        x = out.next_latents
        yield out


def step_per_sample(
    sampler: Sampler,
    model_output: torch.Tensor,
    latents: torch.Tensor,
    step_index: torch.Tensor,
    schedule: Schedule,
    generators: Sequence[torch.Generator],
    **extra: Any,
) -> StepOutput:
    """A stochastic step ``x_next = mean + std * z`` whose noise ``z`` of sample ``i`` comes
    from ``generators[i]``, through the sampler contract alone: the deterministic step gives the
    Gaussian's mean and std, and the step given ``next_latents`` its log-probability. The same
    arithmetic as the sampler's own draw, so the log-probability is the sampler's."""
    noise = torch.cat(
        [draw_noise(latents[i : i + 1], g) for i, g in enumerate(generators)]
    )  # [b, *L] fp32
    return step_with_noise(sampler, model_output, latents, step_index, schedule, noise, **extra)


def step_with_noise(
    sampler: Sampler,
    model_output: torch.Tensor,
    latents: torch.Tensor,
    step_index: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor,
    **extra: Any,
) -> StepOutput:
    """The stochastic step ``x_next = mean + std * noise`` for given standard normal ``noise``
    ``[b, *L]`` (fp32), through the sampler contract alone: the deterministic step gives the
    Gaussian's mean and std, and the step given ``next_latents`` its log-probability. The same
    arithmetic as the sampler's own draw, so the result is the sampler's for that noise."""
    gaussian = sampler.step(
        model_output, latents, step_index, schedule, deterministic=True, **extra
    )
    sample = gaussian.mean + gaussian.std * noise
    return sampler.step(model_output, latents, step_index, schedule, next_latents=sample, **extra)


@dataclass(frozen=True)
class BatchNoise:
    """The sampler's noise for some rows of an iteration's whole batch.

    At every step of :func:`denoise`, a generator seeded with ``seed`` (restarted at each call)
    draws the noise of all ``total`` samples of the iteration, ``[total, *L]``, and ``rows``
    (global sample indices ``[b]``; padding rows past the last sample reuse its noise) take
    theirs. So the noise does not depend on the rollout batch size, the rank or the number of
    processes, and one process whose rollout is one batch draws exactly what the sampler would
    draw from that generator itself. Drawing a whole batch per step costs far less than a
    forward pass of the model.
    """

    seed: int
    total: int
    rows: torch.Tensor  # [b] global sample indices

    def local_rows(self) -> torch.Tensor:
        return self.rows.clamp(max=self.total - 1)


def _predict(policy: Policy, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    return policy.predict(x, t, cond)


def predict_distinct(
    policy: Policy, x: torch.Tensor, t: torch.Tensor, cond: Conditioning
) -> torch.Tensor:
    """``policy.predict(x, t, cond)`` ``[b, *L]``, computed once per distinct row.

    A GRPO group starts from one shared noise and one prompt, so until the sampler's first noisy
    step its rows are identical (the demo's SDE window starts at step 2: 2 of 12 steps computed
    once per group instead of once per sample). Without gradients only: rows are compared by
    value, and a row's output does not depend on the others.
    """
    b = x.shape[0]
    if b < 2 or torch.is_grad_enabled():
        return policy.predict(x, t, cond)
    key = torch.cat(
        [x.reshape(b, -1).float(), t.reshape(b, -1).float()]
        + [v.reshape(b, -1).float() for v in cond.values()],
        dim=1,
    )  # [b, K]
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)  # [d, K], [b]
    if distinct.shape[0] == b:
        return policy.predict(x, t, cond)
    rows = torch.arange(b, device=x.device)
    first = torch.full((distinct.shape[0],), b, device=x.device).scatter_reduce_(
        0, inverse, rows, reduce="amin"
    )  # [d] the first row of each distinct value
    return policy.predict(x[first], t[first], cond.select(first))[inverse]


@torch.no_grad()
def generate(
    policy: Policy,
    sampler: Sampler,
    prompts: list[Prompt],
    seeds: list[int],
    batch_size: int = 4,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Pixels ``[n, C, H, W]`` (or ``[n, C, F, H, W]``) in [0, 1], one per (prompt, seed).

    Each sample's initial noise, and a stochastic sampler's noise at every step, come from
    generators seeded by its own seed, so an image does not depend on the batch (or the rank) it
    was drawn in. ``deterministic`` defaults to True for deterministic samplers.
    """
    if deterministic is None:
        deterministic = not sampler.stochastic
    device = policy.runtime.device
    schedule = sampler.schedule(device=device)
    policy.train(False)
    out_media = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = prompts[start : start + batch_size]
        batch_seeds = seeds[start : start + batch_size]
        cond = policy.encode(batch_prompts)
        x = noise_from_seeds(policy, batch_seeds)  # [b, *L]
        gens = [torch.Generator(device).manual_seed(s + 1_000_003) for s in batch_seeds]
        for out in denoise(policy, sampler, schedule, x, cond, gens, deterministic):
            x = out.next_latents
        out_media.append(policy.decode(x).cpu())
    return torch.cat(out_media)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "prompt"


def save_media(
    media: torch.Tensor,
    prompts: list[Prompt],
    seeds: list[int],
    out_dir: Path,
    fps: float = DEFAULT_FPS,
) -> list[Path]:
    """Write one file per sample, named by index, prompt and seed: a PNG per image
    ``[B, C, H, W]``, an MP4 (H.264, ``fps`` frames per second) per video ``[B, C, F, H, W]``."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (m, p, s) in enumerate(zip(media, prompts, seeds, strict=True)):
        stem = f"{i:04d}-{_slug(p.text)}-seed{s}"
        if m.ndim == 4:  # [C, F, H, W]
            paths.append(write_mp4(m, out_dir / f"{stem}.mp4", fps=fps))
            continue
        array = (m.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        path = out_dir / f"{stem}.png"
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
        paths.append(path)
    return paths
