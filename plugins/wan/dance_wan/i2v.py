"""The Wan image-to-video policy (``wan-i2v``).

Two ways of reading the first frame, decided by the checkpoint, both as diffusers'
``WanImageToVideoPipeline`` (pipeline_wan_i2v.py) builds them:

- Wan2.1 I2V (and Wan2.2 I2V-A14B): the transformer reads ``[noisy latents, mask, condition
  latents]`` over channels. The condition is the VAE encoding (posterior mean) of the video whose
  first frame is the image and whose other frames are zero, normalised with latents_mean / std;
  the mask has the VAE's temporal factor (4) channels, ones on the first latent frame and zeros
  elsewhere. Wan2.1 I2V also reads the image's CLIP features (the penultimate hidden state of its
  CLIPVisionModel) through the cross-attention's image branch.
- Wan2.2 TI2V-5B (``expand_timesteps``): the first latent frame of the input is replaced by the
  image's latents (one frame encoded alone) and its tokens get timestep 0. The pipeline then
  overwrites the first frame of the result with the image latents; here the velocity of the first
  frame points at them instead (``(x - c) / sigma``, so the clean prediction is ``c`` and every
  sampler ends there), which keeps the first frame out of the trained log-probability's
  dependence on the weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.diffusers_policy import EmbeddingCache
from dance.errors import ModelLayoutError
from dance.interfaces import Conditioning, Prompt, Runtime
from dance_wan.base import WanCommonConfig, WanFamilyPolicy
from dance_wan.images import fit_image, image_key, to_pil
from dance_wan.layout import I2V_LAYOUT


@dataclass
class WanI2VConfig(WanCommonConfig):
    """Options of the Wan image-to-video policy."""

    image_resize: str = option(
        "crop",
        "How a conditioning image of another size becomes height x width for the VAE: 'crop'"
        " scales it to cover the frame (bilinear, antialiased) and crops the centre; 'stretch'"
        " resizes it without keeping the aspect ratio (nearest), as the pipeline does for"
        " tensor images.",
        choices=("crop", "stretch"),
    )


class WanI2VPolicy(WanFamilyPolicy):
    """Wan image-to-video (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, Wan2.2-I2V-A14B-Diffusers,
    Wan2.2-TI2V-5B-Diffusers)."""

    name = "wan-i2v"
    config_class = WanI2VConfig
    layout = I2V_LAYOUT
    pipeline_name = "WanImageToVideoPipeline"
    takes_image = True

    def __init__(self, config: WanI2VConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self._image_cache = EmbeddingCache(config.prompt_cache_size, config.cache_prompts)

    def _check_checkpoint(self) -> None:
        config = json.loads((self.path / "transformer" / "config.json").read_text())
        channels_in, channels_out = config.get("in_channels"), config.get("out_channels")
        # Noisy latents + 4 mask channels + condition latents (the VAE's temporal factor is 4).
        self.concat_condition = channels_in == 2 * channels_out + 4
        if self.checkpoint.expand_timesteps and channels_in == channels_out:
            self.concat_condition = False
        elif not self.concat_condition:
            raise ModelLayoutError(
                f"the transformer in {self.path} (in_channels {channels_in}, out_channels"
                f" {channels_out}) reads no image condition: Wan image-to-video needs in_channels"
                " = 2 x out_channels + 4 (Wan2.1 I2V, Wan2.2 I2V-A14B) or expand_timesteps"
                " (Wan2.2 TI2V-5B); use --policy wan-t2v for text-to-video"
            )
        if config.get("image_dim") is not None and not self.checkpoint.has_image_encoder:
            raise ModelLayoutError(
                f"the transformer in {self.path} reads CLIP image features (image_dim"
                f" {config['image_dim']}) but model_index.json names no image_encoder"
            )

    def _load_frozen_components(self) -> None:
        super()._load_frozen_components()
        self.image_encoder = None
        if self.checkpoint.has_image_encoder:
            from transformers import CLIPImageProcessor, CLIPVisionModel

            self.image_processor = self.load_processor(CLIPImageProcessor, "image_processor")
            self.image_encoder = self.load_frozen(CLIPVisionModel, "image_encoder")

    # --- encoding ------------------------------------------------------------------------------

    def _encode_extra(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """``condition_latents [B, z, F or 1, h, w]`` and, with a CLIP image encoder,
        ``image_embeds [B, T, D]``; each distinct image encoded once."""
        names = ["condition_latents", "image_embeds"][: 2 if self.image_encoder else 1]

        def encode_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
            rows = [self._encode_image(image) for image in images]
            return [torch.stack([row[name] for row in rows]) for name in names]

        columns = self._image_cache.lookup([p.image for p in prompts], encode_images, image_key)
        return dict(zip(names, columns, strict=True))

    def _encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded = {"condition_latents": self.condition_latents(image)[0]}
        if self.image_encoder is not None:
            encoded["image_embeds"] = self.clip_features(image)[0]
        return encoded

    def clip_features(self, image: torch.Tensor) -> torch.Tensor:
        """WanImageToVideoPipeline.encode_image: the CLIP vision tower's penultimate hidden
        state ``[1, T, D]`` for the image as an 8-bit RGB picture."""
        inputs = self.image_processor(images=to_pil(image), return_tensors="pt")
        device = self.runtime.device
        with self._offload.on_device(self.image_encoder):
            pixels = inputs.pixel_values.to(device, self.image_encoder.dtype)
            states = self.image_encoder(pixel_values=pixels, output_hidden_states=True)
        return states.hidden_states[-2]

    def condition_latents(self, image: torch.Tensor) -> torch.Tensor:
        """The pipeline's prepare_latents for one image: ``[1, z, F, h, w]`` (the image then
        zero frames, encoded together) or, for TI2V-5B, ``[1, z, 1, h, w]``; posterior mean,
        normalised, fp32."""
        cfg, vae, device = self.config, self.vae, self.runtime.device
        pixels = fit_image(image, cfg.height, cfg.width, cfg.image_resize).to(device)
        video = pixels.unsqueeze(2)  # [1, 3, 1, H, W]
        if self.concat_condition:
            rest = video.new_zeros(1, 3, cfg.num_frames - 1, cfg.height, cfg.width)
            video = torch.cat([video, rest], dim=2)
        with self._offload.on_device(vae):
            latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
        return self.normalised_latents(latents.float())

    # --- the model input -----------------------------------------------------------------------

    def _model_input(self, latents: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        condition = cond["condition_latents"].to(latents.device, latents.dtype)
        if self.concat_condition:
            # [B, 4, F, h, w]: ones on the first latent frame (the image), zeros after.
            mask = latents.new_zeros(latents.shape[0], self.temporal_factor, *latents.shape[2:])
            mask[:, :, 0] = 1.0
            return torch.cat([latents, mask, condition], dim=1)
        # TI2V-5B: the first latent frame is the image's.
        return torch.cat([condition, latents[:, :, 1:]], dim=2)

    def _token_mask(self, device: torch.device) -> torch.Tensor:
        mask = super()._token_mask(device)
        mask[0] = 0.0  # the image's tokens are clean: timestep 0
        return mask

    def _model_output(
        self, out: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        if self.concat_condition:
            return out
        # TI2V-5B: the first frame's velocity points at the image latents (x0 = condition).
        condition = cond["condition_latents"].to(latents.device, torch.float32)
        first = (latents[:, :, :1].float() - condition) / sigmas.view(-1, 1, 1, 1, 1)
        return torch.cat([first, out[:, :, 1:]], dim=2)
