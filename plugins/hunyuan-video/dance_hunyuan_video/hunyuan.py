"""The HunyuanVideo text-to-video policy (``hunyuan-video``).

HunyuanVideo is guidance-distilled: it takes the guidance scale as an input embedding (guidance
scale x 1000, HunyuanVideoPipeline's default scale 6.0) and runs once per step, with no
unconditional pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dance.config import option
from dance.errors import UsageError
from dance.interfaces import Conditioning, Prompt
from dance_hunyuan_video.base import HunyuanCommonConfig, HunyuanFamilyPolicy


@dataclass
class HunyuanVideoConfig(HunyuanCommonConfig):
    """Options of the HunyuanVideo text-to-video policy."""

    # DanceGRPO's HunyuanVideo run (scripts/finetune/finetune_hunyuan_grpo.sh: --h 480 --w 480
    # --t 53), as in the paper.
    height: int = option(480, "Video height in pixels (a multiple of 16).", gt=0)
    width: int = option(480, "Video width in pixels (a multiple of 16).", gt=0)
    num_frames: int = option(
        53, "Frames per video, 4k+1 (the VAE keeps the first and compresses the rest 4x).", ge=1
    )
    guidance: float = option(
        6.0,
        "Embedded guidance scale fed to the transformer's guidance embedding as scale x 1000"
        " (HunyuanVideoPipeline's default 6.0).",
        ge=0.0,
    )


class HunyuanVideoPolicy(HunyuanFamilyPolicy):
    """HunyuanVideo text-to-video (hunyuanvideo-community/HunyuanVideo)."""

    name = "hunyuan-video"
    config_class = HunyuanVideoConfig

    def _check_transformer_config(self, config: dict[str, Any]) -> None:
        if config.get("image_condition_type") is not None or config.get(
            "in_channels"
        ) != config.get("out_channels"):
            raise self._transformer_kind_error(
                config,
                "a text-to-video transformer (in_channels = out_channels); for SkyReels-V1's"
                " image-to-video transformer use --policy skyreels-i2v",
            )

    def _check_prompts(self, prompts: Sequence[Prompt]) -> None:
        if any(p.image is not None for p in prompts):
            raise UsageError(
                "policy 'hunyuan-video' is text-to-video: prompts must not carry an image (use"
                " --policy skyreels-i2v for image-to-video)"
            )

    def _guided_forward(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
    ) -> torch.Tensor:
        return self._transformer(
            model,
            dtype,
            latents,
            timestep,
            cond["prompt_embeds"],
            cond["prompt_attention_mask"],
            cond["pooled_prompt_embeds"],
        )
