"""Generation without training: `dance sample`, evaluation, and Best-of-N build on this."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dance.errors import UsageError
from dance.interfaces import Conditioning, Policy, Prompt, Sampler, Schedule, StepOutput
from dance.video_io import DEFAULT_FPS, write_mp4

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


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
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> Iterator[StepOutput]:
    """The sampling loop: yield every step's output, starting from latents ``x [b, *L]``."""
    b = x.shape[0]
    for k in range(schedule.num_steps):
        t = schedule.timesteps[k].expand(b)  # [b]
        k_idx = torch.full((b,), k, dtype=torch.long, device=x.device)
        out = sampler.step(
            predict_distinct(policy, x, t, cond),
            x,
            k_idx,
            schedule,
            generator=generator,
            deterministic=deterministic,
        )
        x = out.next_latents
        yield out


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

    Each sample's initial noise comes from its own seed, so an image does not depend on the batch
    it was drawn in. ``deterministic`` defaults to True for deterministic samplers.
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
        gen = torch.Generator(device).manual_seed(batch_seeds[0] + 1_000_003)
        for out in denoise(policy, sampler, schedule, x, cond, gen, deterministic):
            x = out.next_latents
        out_media.append(policy.decode(x).cpu())
    return torch.cat(out_media)


def resolve_trained(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """Find trained weights from a run directory, a checkpoint directory or its trained/ folder.

    Returns the weights folder and, when ``path`` belongs to a run, that run's resolved config.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist (expected a run directory or a checkpoint).")
    run_dir = None
    if (path / "checkpoints" / "latest").is_file():
        run_dir = path
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    if (path / "trained").is_dir():
        run_dir = run_dir or (path.parent.parent if path.parent.name == "checkpoints" else None)
        path = path / "trained"
    config = None
    if run_dir is not None and (run_dir / "config.toml").is_file():
        config = tomllib.loads((run_dir / "config.toml").read_text())
    return path, config


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
