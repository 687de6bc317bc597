"""The config fields every diffusers policy shares, each described once.

A policy's config subclasses :class:`DiffusersPolicyConfig`, changes a default with
:func:`override` (the description stays the base's, plus an optional note on where the new default
comes from) and adds its model's own fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from dance.config import option
from dance.errors import ConfigError

# The LoRA targets of an MMDiT's joint attention (SD3, Qwen-Image): its image projections and its
# text ("added") projections.
JOINT_ATTENTION_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


@dataclass
class DiffusersPolicyConfig:
    """Options every diffusers policy has."""

    # Height and width must be multiples of this (the VAE factor times any patching), for the
    # reason the message gives.
    size_multiple: ClassVar[int] = 8
    size_reason: ClassVar[str] = "the VAE factor"

    model: str = option(
        "",
        "Diffusers checkpoint (the layout its pipeline's save_pretrained writes): a local "
        "directory, or a Hugging Face repo id already in the local cache; nothing is downloaded.",
    )
    height: int = option(
        512, "Height in pixels of the generated images or videos (a multiple of 8 or 16).", gt=0
    )
    width: int = option(
        512, "Width in pixels of the generated images or videos (a multiple of 8 or 16).", gt=0
    )
    finetune: str = option(
        "lora",
        "What trains: LoRA adapters on the denoising network, the transformer or UNet ('lora'), "
        "or the whole network ('full').",
        choices=("lora", "full"),
    )
    lora_rank: int = option(128, "LoRA rank r.", ge=1)
    lora_alpha: float = option(
        256.0, "LoRA alpha; the adapter output is scaled by alpha / r.", gt=0
    )
    lora_targets: list[str] = option(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "Modules of the denoising network (name suffixes) that get LoRA adapters; by default the "
        "attention q/k/v/out projections of every attention layer.",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute the network's blocks in the backward pass to save activation memory."
    )
    offload_frozen: bool = option(
        False,
        "On CUDA, keep the text encoders and the VAE in CPU memory and move each to the GPU only "
        "while it runs (prompts are cached, so the encoders run only for new prompts); no effect "
        "on CPU.",
    )
    cache_prompts: bool = option(
        True, "Encode each distinct prompt once and reuse its embeddings (the encoders are frozen)."
    )
    prompt_cache_size: int = option(
        256,
        "Most prompts kept in the embedding cache, least recently used dropped first.",
        ge=1,
    )

    def check(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % self.size_multiple:
                raise ConfigError(
                    f"policy.{name} must be a multiple of {self.size_multiple}"
                    f" ({self.size_reason}), got {value}"
                )
        if self.finetune == "lora" and not self.lora_targets:
            raise ConfigError("policy.lora_targets is empty: name the modules that get LoRA")


def override(name: str, default: Any, note: str = "", base: type = DiffusersPolicyConfig) -> Any:
    """Redeclare field ``name`` of ``base`` with another default, for a subclass: same
    description (``note`` appended, e.g. " (DanceGRPO: 5.0)"), same allowed values."""
    field = {f.name: f for f in dataclasses.fields(base)}[name]
    meta = dict(field.metadata)
    return option(
        default,
        meta.pop("help") + note,
        **{k: v for k, v in meta.items() if v is not None},
    )


def check_video_frames(frames: int) -> None:
    """ConfigError unless ``policy.num_frames`` is 4k+1: video VAEs (HunyuanVideo, Wan) keep the
    first frame and compress the others 4x in time."""
    if (frames - 1) % 4:
        raise ConfigError(
            f"policy.num_frames must be 4k+1 (the VAE keeps the first frame and compresses"
            f" the rest 4x), got {frames}; nearest: {frames - (frames - 1) % 4}"
        )
