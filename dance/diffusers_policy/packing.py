"""FLUX-style latent packing: a latent grid as a sequence of 2x2 patch tokens, as diffusers'
``FluxPipeline`` lays it out (``_pack_latents``, ``_unpack_latents``,
``_prepare_latent_image_ids``); FLUX.1 Kontext and other FLUX-derived pipelines share it."""

from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)*(w/2), C*4]: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, S, C*4] -> [B, C, h, w] for a latent of h x w (FluxPipeline._unpack_latents)."""
    b, _, channels = latents.shape
    latents = latents.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, channels // 4, h, w)


def latent_image_ids(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """[rows*cols, 3] position ids (0, row, col) of the packed tokens
    (FluxPipeline._prepare_latent_image_ids); kept in fp32, which holds them exactly."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device)
