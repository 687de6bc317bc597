"""Settings and helpers shared by the Wan plugin tests (a module with a unique name, so that test
files can import it; conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dance.interfaces import Runtime
from dance_wan.prompting import DEFAULT_NEGATIVE_PROMPT

# Small settings: a 5-frame 32x32 video is a 2-frame 4x4 latent (VAE 4x8x8), 8 tokens (patch 2);
# TI2V-5B's VAE compresses 16x, so its tests use 64x64.
SIZE, TI2V_SIZE, FRAMES, TEXT_LEN = 32, 64, 5, 16
RANK, ALPHA = 4, 8.0  # alpha != rank, so that a lost alpha would change the LoRA scale
SMALL = {
    "height": SIZE,
    "width": SIZE,
    "num_frames": FRAMES,
    "max_sequence_length": TEXT_LEN,
    "lora_rank": RANK,
    "lora_alpha": ALPHA,
}
BOUNDARY = 0.95  # the tiny A14B's boundary_ratio (see conftest.py)
TEXTS = ["a cat on the beach", "a red fox in the snow, cinematic lighting"]


def load_pipeline(pipeline_class: type, path: Path):  # noqa: ANN201 - a diffusers pipeline
    """The diffusers pipeline from ``path`` with VAE tiling on, as the policy's default."""
    pipe = pipeline_class.from_pretrained(path, local_files_only=True)
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A random conditioning image [3, H, W] in [0, 1]."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def guided_by_hand(transformer, latents, sigma, positive, negative, scale, image=None, mask=None):
    """The pipeline's two transformer calls at timestep sigma * 1000 and its CFG combination."""
    t = torch.full((latents.shape[0],), sigma * 1000.0)
    if mask is not None:  # expand_timesteps: one timestep per token
        t = mask[:, ::2, ::2].flatten()[None] * t[:, None]
    outs = [
        transformer(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=embeds,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
        for embeds in (positive, negative)
    ]
    return outs[1] + scale * (outs[0] - outs[1])


def euler_scheduler(pipe, shift):  # noqa: ANN001, ANN201
    """The pipeline's Euler scheduler on dance's flow schedule: sigmas 1 - k/N before the shift
    (WanPipeline's set_timesteps would end at sigma 1/1000 instead of 0)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
    original = scheduler.set_timesteps

    def set_timesteps(num_inference_steps, device=None):  # noqa: ANN001, ANN202
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        return original(num_inference_steps, device=device, sigmas=sigmas)

    scheduler.set_timesteps = set_timesteps
    return scheduler


def ode_video(policy, prompt, x, steps=3, shift=3.0):  # noqa: ANN001, ANN201
    """The ode sampler + policy + decode, from latents ``x``."""
    from dance.sampling.generate import denoise
    from dance_flow_samplers.ode import EulerODESampler, ODEConfig

    sampler = EulerODESampler(ODEConfig(num_steps=steps, shift=shift), Runtime())
    cond = policy.encode([prompt])
    policy.train(False)
    with torch.no_grad():
        for out in denoise(
            policy, sampler, sampler.schedule(), x.clone(), cond, deterministic=True
        ):
            latents = out.next_latents
        return policy.decode(latents)


def assert_pipeline_video(pipe, video, x, size, **call):  # noqa: ANN001, ANN003
    """``video`` [1, C, F, H, W] is what the pipeline's __call__ gives from latents ``x`` with the
    Euler scheduler on dance's schedule (3 steps, shift 3), Wan's negative prompt, guidance 3."""
    pipe.scheduler = euler_scheduler(pipe, shift=3.0)
    expected = pipe(
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        height=size,
        width=size,
        num_frames=FRAMES,
        num_inference_steps=3,
        guidance_scale=3.0,
        latents=x.clone(),
        max_sequence_length=TEXT_LEN,
        output_type="pt",
        **call,
    ).frames  # [1, F, C, H, W]
    torch.testing.assert_close(video, expected.permute(0, 2, 1, 3, 4), atol=1e-4, rtol=1e-4)
