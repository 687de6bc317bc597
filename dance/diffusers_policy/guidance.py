"""Classifier-free guidance in the forms diffusers pipelines use.

- True CFG: the network runs on the prompt and on a negative (often empty) prompt, both branches
  in one batch, and the outputs combine as ``uncond + s * (cond - uncond)`` (Ho & Salimans,
  "Classifier-Free Diffusion Guidance", 2022; the form of every diffusers pipeline). Stable
  Diffusion, SD3 and SkyReels use it, in rollouts and in training alike.
- Embedded guidance: a guidance-distilled network reads the scale as an input embedding and runs
  once (FLUX.1-dev, HunyuanVideo).
- None: one conditional pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def guided_forward(
    forward: Callable[..., torch.Tensor],
    cond: Sequence[torch.Tensor],
    uncond: Sequence[torch.Tensor],
    scale: float,
    uncond_first: bool = True,
) -> torch.Tensor:
    """True CFG with both branches in one call of ``forward``.

    ``cond`` and ``uncond`` are the batch-first inputs of the two branches (``[B, ...]`` each,
    in ``forward``'s argument order); they are concatenated over the batch, uncond first or
    second as the model's pipeline orders them (so that batched kernels see what the pipeline
    runs). A scale of 1 or less is one conditional pass."""
    if scale <= 1.0:
        return forward(*cond)
    first, second = (uncond, cond) if uncond_first else (cond, uncond)
    out = forward(*(torch.cat([a, b]) for a, b in zip(first, second, strict=True)))
    a, b = out.chunk(2)
    return cfg_combine(a, b, scale) if uncond_first else cfg_combine(b, a, scale)


def embedded_guidance(
    scale: float,
    batch: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    multiplier: float = 1.0,
) -> torch.Tensor:
    """The guidance input ``[B]`` of a guidance-distilled network: ``scale`` in ``dtype`` (the
    dtype the pipeline makes it in, which rounds it: 6.0 x 1000 in bf16 is 6016), times
    ``multiplier`` (HunyuanVideo's embedder reads scale x 1000)."""
    guidance = torch.full((batch,), scale, dtype=dtype).to(device)
    return guidance * multiplier if multiplier != 1.0 else guidance
