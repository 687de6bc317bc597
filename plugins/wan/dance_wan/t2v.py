"""The Wan text-to-video policy (``wan-t2v``): Wan2.1 T2V (1.3B, 14B), Wan2.2 TI2V-5B as
text-to-video, Wan2.2 T2V-A14B with its two experts; all in WanPipeline's layout."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dance.errors import ModelLayoutError
from dance_wan.base import WanCommonConfig, WanFamilyPolicy
from dance_wan.layout import T2V_LAYOUT


@dataclass
class WanT2VConfig(WanCommonConfig):
    """Options of the Wan text-to-video policy."""


class WanT2VPolicy(WanFamilyPolicy):
    """Wan text-to-video (Wan-AI/Wan2.1-T2V-1.3B-Diffusers and its siblings)."""

    name = "wan-t2v"
    config_class = WanT2VConfig
    layout = T2V_LAYOUT
    pipeline_name = "WanPipeline"
    image_hint = " (use --policy wan-i2v for image-to-video)"

    def _check_checkpoint(self) -> None:
        config = self._transformer_config()
        if config.get("image_dim") is not None or config.get("in_channels") != config.get(
            "out_channels"
        ):
            raise ModelLayoutError(
                f"the transformer in {self.path} (in_channels {config.get('in_channels')},"
                f" out_channels {config.get('out_channels')}, image_dim"
                f" {config.get('image_dim')}) is an image-to-video transformer; use"
                " --policy wan-i2v"
            )

    def _transformer_config(self) -> dict:
        return json.loads((self.path / "transformer" / "config.json").read_text())
