"""The Stable Diffusion 1.x policy: a latent diffusion UNet predicting noise (SD 1.4, SD 1.5).

Prompt encoding, classifier-free guidance, the UNet call and decoding follow diffusers'
``StableDiffusionPipeline`` (pipelines/stable_diffusion/pipeline_stable_diffusion.py), so that the
policy and the pipeline given the same inputs compute the same tensors, and trained weights load
back into the pipeline (``load_lora_weights`` for LoRA, ``unet/`` for a full fine-tune).
Guidance runs in rollouts and in training alike, as in DanceGRPO's and DDPO's SD scripts
(``train.cfg = True``): the trained output is ``eps_u + s * (eps_c - eps_u)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dance.config import option
from dance.diffusers_policy import (
    DiffusersPolicy,
    DiffusersPolicyConfig,
    guided_forward,
    override,
    vae_scale_factor,
    warn_truncated,
)
from dance.interfaces import Conditioning, Runtime, imported_classes
from dance.models.finetune import TrainedNetwork
from dance_sd import layout


@dataclass
class SDConfig(DiffusersPolicyConfig):
    """Options of the Stable Diffusion policy."""

    size_reason = "the SD VAE factor"

    lora_rank: int = override(
        "lora_rank", 4, note=" DDPO's SD LoRA: 4, the diffusers LoRA attention processor default."
    )
    lora_alpha: float = override("lora_alpha", 4.0, note=" DDPO: alpha = r.")
    prompt_cache_size: int = override(
        "prompt_cache_size", 1024, note=" SD 1.x: 77 x 768 values, 115 KiB per prompt in bf16."
    )
    guidance_scale: float = option(
        5.0,
        "Classifier-free guidance scale s in eps_u + s * (eps_c - eps_u), used in rollouts and "
        "training alike (DanceGRPO: 5.0); 1 or less turns guidance off (one UNet pass, as the "
        "pipeline does).",
        ge=0.0,
    )
    decode_batch_size: int = option(
        8, "Images decoded per VAE pass (the VAE decoder's activations are large at 512 px).", ge=1
    )


class SDPolicy(DiffusersPolicy):
    """Stable Diffusion 1.x text-to-image: a CLIP text encoder, a UNet over 4-channel latents
    predicting the noise, and the SD VAE. Classifier-free guidance with the empty prompt."""

    name = "sd"
    config_class = SDConfig
    modality = "image"
    prediction_type = "epsilon"
    checkpoint_kind = "a diffusers Stable Diffusion 1.x directory"
    resolve_model = staticmethod(layout.resolve_model)
    checkpoint_example = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # LoRA saves through StableDiffusionPipeline.save_lora_weights (its load_lora_weights reads it
    # back); a full fine-tune is unet/, a UNet2DConditionModel.
    trained_network = TrainedNetwork(
        component="unet", pipeline="StableDiffusionPipeline", model="Stable Diffusion", label="UNet"
    )
    block_classes = imported_classes(
        "diffusers.models.unets.unet_2d_blocks",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
        "UNetMidBlock2DCrossAttn",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
    )

    def __init__(self, config: SDConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        # The unconditional (empty-prompt) embedding [1, 77, D], encoded once at load: every
        # guided UNet call pairs it with the prompts (StableDiffusionPipeline.encode_prompt with
        # negative_prompt=None encodes "" padded to the prompt length).
        self.negative_conditioning()

    @property
    def _uncond(self) -> torch.Tensor:
        return self.negative_conditioning()["prompt_embeds"]

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = self.load_tokenizer(CLIPTokenizer, "tokenizer")
        self.text_encoder = self.load_frozen(CLIPTextModel, "text_encoder")
        self.vae = self.load_frozen(AutoencoderKL, "vae")
        self.vae_scale_factor = factor = vae_scale_factor(self.vae)
        self.check_size_factor(factor, "the VAE factor")
        # LoRA adapters or the whole UNet; self.trained keeps the reference model and saves and
        # loads what trains.
        self.unet = self.load_network(UNet2DConditionModel, self.path / "unet")
        cfg = self.config
        self.latent_shape = (
            self.unet.config.in_channels,
            cfg.height // factor,
            cfg.width // factor,
        )

    # --- Policy interface ----------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor]:
        """StableDiffusionPipeline.encode_prompt (clip_skip None): pad and truncate to 77 tokens,
        take the text encoder's last hidden state (after its final layer norm), [N, 77, D]."""
        device = self.runtime.device
        length = self.tokenizer.model_max_length  # 77: CLIP's position table
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        warn_truncated(self.tokenizer, texts, length, "CLIP")
        encoder = self.text_encoder
        with self._offload.on_device(encoder):
            # The pipeline passes the attention mask only when the encoder's config asks for it
            # (SD's does not: padding tokens are attended to, as in training).
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(device)
            embeds = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return (embeds.to(self.text_encoder.dtype),)

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Guided noise prediction [B, 4, h, w] (fp32) at the discrete ``timesteps [B]``, called as
        StableDiffusionPipeline calls its UNet: one batch of [unconditional, conditional] inputs,
        then eps_u + s * (eps_c - eps_u)."""
        # The reference inside reference(); bf16 autocast on CUDA (DanceGRPO's
        # mixed_precision="bf16"), the weights' own dtype on CPU.
        model, dtype = self.trained.forward_network()
        device = self.runtime.device
        batch = latents.shape[0]
        x = latents.to(device, dtype)
        t = timesteps.to(device).expand(batch)
        embeds = cond["prompt_embeds"].to(device, dtype)

        def unet(x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            with self.trained.autocast_context():
                return model(x, t, encoder_hidden_states=embeds, return_dict=False)[0].float()

        uncond = self.negative_inputs(["prompt_embeds"], [embeds])
        return guided_forward(unet, (x, t, embeds), (x, t, *uncond), self.config.guidance_scale)

    def _decode_chunk(self, batch: int) -> int:
        return self.config.decode_batch_size
