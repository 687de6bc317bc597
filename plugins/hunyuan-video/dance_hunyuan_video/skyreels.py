"""The SkyReels-V1 image-to-video policy (``skyreels-i2v``).

SkyReels-V1-Hunyuan-I2V is HunyuanVideo's transformer fine-tuned to read the noisy latents and the
conditioning image's latents concatenated over channels. As diffusers'
``HunyuanSkyreelsImageToVideoPipeline`` (pipeline_hunyuan_skyreels_image2video.py) does it, the
image is encoded by the VAE as a one-frame video, scaled by the VAE's scaling factor and padded
with zero latents over the remaining frames; sampling uses true classifier-free guidance against a
negative prompt (DanceGRPO's train_grpo_skyreels_i2v.py: the empty prompt, scale 5), with the
embedded guidance at 1.0 x 1000.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dance.config import option
from dance.diffusers_policy import EmbeddingCache, override
from dance.interfaces import Conditioning, Prompt, Runtime
from dance_hunyuan_video.base import HunyuanCommonConfig, HunyuanFamilyPolicy


@dataclass
class SkyReelsI2VConfig(HunyuanCommonConfig):
    """Options of the SkyReels-V1 image-to-video policy."""

    # DanceGRPO's SkyReels run (scripts/finetune/finetune_skyreels_i2v.sh: --h 400 --w 640 --t 53).
    height: int = override("height", 400)
    width: int = override("width", 640)
    guidance: float = override(
        "guidance",
        1.0,
        note=" SkyReels: the pipeline's default 1.0; DanceGRPO passes 1000.",
        base=HunyuanCommonConfig,
    )
    cfg_scale: float = option(
        5.0,
        "True classifier-free guidance scale against the negative prompt (DanceGRPO's cfg_infer"
        " 5.0; the diffusers pipeline defaults to 6.0); 1 = no unconditional pass.",
        ge=1.0,
    )
    negative_prompt: str = option(
        "", "Prompt of the unconditional branch of the guidance (DanceGRPO: the empty prompt)."
    )
    image_resize: str = option(
        "crop",
        "How a conditioning image of another size becomes height x width: 'crop' scales it to"
        " cover the frame (bilinear, antialiased) and crops the centre; 'stretch' resizes it"
        " without keeping the aspect ratio, as the diffusers pipeline does for tensor images"
        " (nearest neighbour).",
        choices=("crop", "stretch"),
    )
    image_latent: str = option(
        "sample",
        "Image latents: a draw from the VAE's posterior ('sample', as the pipeline and DanceGRPO;"
        " seeded by image_latent_seed, so that an image always gets the same latents) or its"
        " mean ('mode').",
        choices=("sample", "mode"),
    )
    image_latent_seed: int = option(0, "Seed of the posterior draw of 'sample'.", ge=0)


class SkyReelsI2VPolicy(HunyuanFamilyPolicy):
    """SkyReels-V1 image-to-video on HunyuanVideo's layout (hunyuanvideo-community/HunyuanVideo
    with transformer Skywork/SkyReels-V1-Hunyuan-I2V)."""

    name = "skyreels-i2v"
    config_class = SkyReelsI2VConfig
    takes_image = True

    def __init__(self, config: SkyReelsI2VConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self._image_cache = EmbeddingCache(config.prompt_cache_size, config.cache_prompts)

    def _check_transformer_config(self, config: dict[str, Any]) -> None:
        if config.get("image_condition_type") is not None or config.get(
            "in_channels"
        ) != 2 * config.get("out_channels", 0):
            raise self._transformer_kind_error(
                config,
                "SkyReels-V1's image-to-video transformer (in_channels = 2 x out_channels: noisy"
                " and image latents); set policy.transformer=Skywork/SkyReels-V1-Hunyuan-I2V, or"
                " use --policy hunyuan-video for text-to-video",
            )

    # --- encoding ------------------------------------------------------------------------------

    def _encode_extra(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """``image_latents [B, C, 1, h, w]``: the first latent frame (the zero padding over the
        other frames is added in predict, so the cache and the rollout store one frame)."""
        if self.config.cfg_scale != 1.0:
            self.negative_conditioning()  # encoded here, with the prompts, not inside predict
        (latents,) = self._image_cache.lookup(
            [p.image for p in prompts],
            lambda images: [torch.stack([self._encode_image(image) for image in images])],
            key=_image_key,
        )
        return {"image_latents": latents}

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """[C, H, W] in [0, 1] -> [1, 3, height, width] in [-1, 1], the VAE's input (the
        pipeline's video_processor.preprocess, with the resize chosen by image_resize)."""
        cfg = self.config
        x = image.float()[None]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        height, width = cfg.height, cfg.width
        if tuple(x.shape[-2:]) != (height, width):
            if cfg.image_resize == "stretch":
                # VaeImageProcessor.resize for tensors: F.interpolate's default nearest mode.
                x = F.interpolate(x, size=(height, width))
            else:
                scale = max(height / x.shape[-2], width / x.shape[-1])
                size = (
                    max(height, math.ceil(x.shape[-2] * scale - 1e-6)),
                    max(width, math.ceil(x.shape[-1] * scale - 1e-6)),
                )
                x = F.interpolate(
                    x, size=size, mode="bilinear", antialias=True, align_corners=False
                )
                top, left = (size[0] - height) // 2, (size[1] - width) // 2
                x = x[..., top : top + height, left : left + width]
        return x.clamp(0, 1) * 2 - 1

    def _encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """HunyuanSkyreelsImageToVideoPipeline.prepare_latents for one image: VAE-encode it as a
        one-frame video, take a posterior draw (or the mean), scale by the scaling factor.
        Returns [C, 1, h, w] fp32."""
        vae, device = self.vae, self.runtime.device
        x = self.prepare_image(image).to(device, vae.dtype).unsqueeze(2)  # [1, 3, 1, H, W]
        with self._offload.on_device(vae):
            posterior = vae.encode(x).latent_dist
            if self.config.image_latent == "sample":
                # A CPU generator: the same draw on every device (randn_tensor moves it over).
                generator = torch.Generator().manual_seed(self.config.image_latent_seed)
                latent = posterior.sample(generator)
            else:
                latent = posterior.mode()
        return latent.float()[0] * vae.config.scaling_factor

    # --- prediction ----------------------------------------------------------------------------

    def _hidden_states(self, latents: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """[noisy latents, image latents] over channels [B, 2C, F, h, w]: the image latents are
        the first frame, zero-padded over the others. The guidance (true CFG against the negative
        prompt, negative + cfg_scale * (positive - negative)) is the family's."""
        frames = latents.shape[2]
        image = cond["image_latents"].to(latents.device, latents.dtype)  # [B, C, 1, h, w]
        padding = image.new_zeros(image.shape[0], image.shape[1], frames - 1, *image.shape[3:])
        return torch.cat([latents, torch.cat([image, padding], dim=2)], dim=1)


def _image_key(image: torch.Tensor) -> str:
    """A content hash of an image, the key of the image-latent cache."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha1(data.numpy().tobytes()).hexdigest()
    return f"{tuple(data.shape)}:{digest}"
