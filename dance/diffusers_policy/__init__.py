"""One base for policies built on a diffusers pipeline (FLUX, Stable Diffusion, HunyuanVideo...).

A new diffusers policy subclasses :class:`DiffusersPolicy` and :class:`DiffusersPolicyConfig` and
writes only what is its model's own: which components to load, how prompts are tokenized and
encoded, how the denoising network is called, the latent layout. The base brings the shared
config fields, the prompt-embedding cache, loading and offloading of frozen parts, classifier-free
guidance in its forms, FLUX-style latent packing, the VAE output stage and the trained network
(LoRA or full fine-tune, from :mod:`dance.models.finetune`).
"""

from dance.diffusers_policy.cache import EmbeddingCache, image_key
from dance.diffusers_policy.config import DiffusersPolicyConfig, check_video_frames, override
from dance.diffusers_policy.guidance import cfg_combine, embedded_guidance, guided_forward
from dance.diffusers_policy.packing import latent_image_ids, pack_latents, unpack_latents
from dance.diffusers_policy.policy import DiffusersPolicy, vae_scale_factor, warn_truncated

__all__ = [
    "DiffusersPolicy",
    "DiffusersPolicyConfig",
    "EmbeddingCache",
    "cfg_combine",
    "check_video_frames",
    "embedded_guidance",
    "guided_forward",
    "image_key",
    "latent_image_ids",
    "override",
    "pack_latents",
    "unpack_latents",
    "vae_scale_factor",
    "warn_truncated",
]
