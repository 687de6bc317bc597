"""The HunyuanVideo text-to-video policy (``hunyuan-video``).

HunyuanVideo is guidance-distilled: it takes the guidance scale as an input embedding (guidance
scale x 1000, HunyuanVideoPipeline's default scale 6.0) and runs once per step, with no
unconditional pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dance_hunyuan_video.base import HunyuanCommonConfig, HunyuanFamilyPolicy


@dataclass
class HunyuanVideoConfig(HunyuanCommonConfig):
    """Options of the HunyuanVideo text-to-video policy (the family's defaults are its own)."""


class HunyuanVideoPolicy(HunyuanFamilyPolicy):
    """HunyuanVideo text-to-video (hunyuanvideo-community/HunyuanVideo)."""

    name = "hunyuan-video"
    config_class = HunyuanVideoConfig
    image_hint = " (use --policy skyreels-i2v for image-to-video)"

    def _check_transformer_config(self, config: dict[str, Any]) -> None:
        if config.get("image_condition_type") is not None or config.get(
            "in_channels"
        ) != config.get("out_channels"):
            raise self._transformer_kind_error(
                config,
                "a text-to-video transformer (in_channels = out_channels); for SkyReels-V1's"
                " image-to-video transformer use --policy skyreels-i2v",
            )
