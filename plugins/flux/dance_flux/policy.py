"""The FLUX.1 policy: a rectified-flow text-to-image transformer (FLUX.1-dev, FLUX.1-schnell).

Prompt encoding, noise, latent packing, position ids and decoding follow diffusers'
``FluxPipeline`` (pipelines/flux/pipeline_flux.py) so that a policy and the pipeline given the same
inputs compute the same tensors, and trained weights load back into the pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dance.config import option
from dance.diffusers_policy import (
    DiffusersPolicy,
    DiffusersPolicyConfig,
    embedded_guidance,
    latent_image_ids,
    override,
    pack_latents,
    unpack_latents,
    vae_scale_factor,
    warn_truncated,
)
from dance.interfaces import Conditioning, Runtime, imported_classes
from dance.models.finetune import TrainedNetwork
from dance_flux import layout

__all__ = ["FluxConfig", "FluxPolicy", "latent_image_ids", "pack_latents", "unpack_latents"]

logger = logging.getLogger(__name__)


@dataclass
class FluxConfig(DiffusersPolicyConfig):
    """Options of the FLUX policy."""

    size_multiple = 16
    size_reason = "VAE factor 8 x 2x2 latent packing"

    height: int = override("height", 720)
    width: int = override("width", 720)
    prompt_cache_size: int = override("prompt_cache_size", 256, " FLUX.1: 4 MiB a prompt in bf16.")
    guidance: float = option(
        3.5,
        "Distilled guidance scale fed to the transformer's guidance embedding (FLUX.1-dev); "
        "ignored, with a warning, when the transformer has none (FLUX.1-schnell).",
        ge=0.0,
    )
    max_sequence_length: int = option(
        512, "T5 prompt length in tokens: prompts are padded and truncated to it.", ge=1, le=512
    )


class FluxPolicy(DiffusersPolicy):
    """FLUX.1 text-to-image: CLIP + T5 prompt encoders, a flow-matching transformer over packed
    2x2 latent patches, and a 16-channel VAE. Predicts the flow velocity."""

    name = "flux"
    config_class = FluxConfig
    modality = "image"
    prediction_type = "flow"
    checkpoint_kind = "a diffusers FLUX directory"
    resolve_model = staticmethod(layout.resolve_model)
    checkpoint_example = "black-forest-labs/FLUX.1-dev"
    text_keys = ("prompt_embeds", "pooled_prompt_embeds")
    # LoRA saves through FluxPipeline.save_lora_weights (its load_lora_weights reads it back); a
    # full fine-tune is transformer/, a FluxTransformer2DModel.
    trained_network = TrainedNetwork(component="transformer", pipeline="FluxPipeline", model="FLUX")
    block_classes = imported_classes(
        "diffusers.models.transformers.transformer_flux",
        "FluxTransformerBlock",
        "FluxSingleTransformerBlock",
    )

    def __init__(self, config: FluxConfig, runtime: Runtime) -> None:
        self._ids_cache: dict[tuple[str, int], torch.Tensor] = {}
        super().__init__(config, runtime)

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizerFast, T5EncoderModel, T5TokenizerFast

        self.tokenizer = self.load_tokenizer(CLIPTokenizerFast, "tokenizer")
        self.tokenizer_2 = self.load_tokenizer(T5TokenizerFast, "tokenizer_2")
        self.text_encoder = self.load_frozen(CLIPTextModel, "text_encoder")
        self.text_encoder_2 = self.load_frozen(T5EncoderModel, "text_encoder_2")
        self.vae = self.load_frozen(AutoencoderKL, "vae")
        self.vae_scale_factor = vae_scale_factor(self.vae)
        factor = self.vae_scale_factor * 2
        self.check_size_factor(factor, f"VAE factor {self.vae_scale_factor} x 2x2 packing")
        # Latent grid as FluxPipeline.prepare_latents computes it; tokens are its 2x2 patches.
        self.latent_height = 2 * (self.config.height // factor)
        self.latent_width = 2 * (self.config.width // factor)

        # LoRA adapters or the whole transformer; self.trained keeps the reference model and
        # saves and loads what trains.
        self.transformer = self.load_network(FluxTransformer2DModel, self.path / "transformer")
        self.latent_channels = self.transformer.config.in_channels // 4
        self.latent_shape = (self.latent_channels, self.latent_height, self.latent_width)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        if not self.guidance_embeds:  # info, not a warning: schnell-style models are legitimate
            logger.info(
                "the FLUX transformer in %s has no guidance embedding (guidance_embeds=false, as in"
                " FLUX.1-schnell): policy.guidance=%s is ignored",
                self.path,
                self.config.guidance,
            )

    # --- Policy interface ----------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 token embeddings [N, S, D] and CLIP pooled embeddings [N, D]:
        FluxPipeline._get_t5_prompt_embeds and _get_clip_prompt_embeds."""
        device = self.runtime.device
        clip_len = self.tokenizer.model_max_length  # 77: CLIP's position table
        clip_ids = self.tokenizer(
            texts, padding="max_length", max_length=clip_len, truncation=True, return_tensors="pt"
        ).input_ids
        t5_len = self.config.max_sequence_length
        t5_ids = self.tokenizer_2(
            texts, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt"
        ).input_ids
        with self._offload.on_device(self.text_encoder, self.text_encoder_2):
            pooled = self.text_encoder(clip_ids.to(device), output_hidden_states=False)
            pooled = pooled.pooler_output.to(self.text_encoder.dtype)
            embeds = self.text_encoder_2(t5_ids.to(device), output_hidden_states=False)[0]
            embeds = embeds.to(self.text_encoder_2.dtype)
        warn_truncated(self.tokenizer, texts, clip_len, "CLIP")
        warn_truncated(self.tokenizer_2, texts, t5_len, "T5")
        return embeds, pooled

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Packed fp32 noise [B, S, C*4], drawn as FluxPipeline.prepare_latents draws it (unpacked
        [B, C, h, w] randn, then packed): the same generator gives the pipeline's noise."""
        return pack_latents(super().initial_noise(batch_size, generator))

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow velocity [B, S, C] (fp32) at sigma ``timesteps [B]``, called as FluxPipeline
        calls its transformer: timestep = sigma (the pipeline's t / 1000), distilled guidance,
        zero text ids and (0, row, col) image ids."""
        model, dtype = self.trained.forward_network()  # the reference inside reference()
        device = self.runtime.device
        batch, tokens, _ = latents.shape
        prompt_embeds = cond["prompt_embeds"].to(device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = embedded_guidance(self.config.guidance, batch, device)
        hidden_states, img_ids = self._transformer_tokens(latents.to(device, dtype), cond)
        with self.trained.autocast_context():
            out = model(
                hidden_states=hidden_states,
                encoder_hidden_states=prompt_embeds,
                pooled_projections=cond["pooled_prompt_embeds"].to(device, dtype),
                timestep=timesteps.to(device, torch.float32).expand(batch),
                img_ids=img_ids,
                txt_ids=self._text_ids(prompt_embeds.shape[1]),
                guidance=guidance,
                return_dict=False,
            )[0]
        # Only the noisy tokens' output is the velocity (conditioning tokens follow them).
        return out[:, :tokens].float()

    def _transformer_tokens(
        self, latents: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's image tokens [B, S', C] and their position ids [S', 3]: the noisy
        latents alone here; FLUX.1 Kontext appends its source image's tokens."""
        return latents, self._image_ids(latents.shape[1])

    def _image_ids(self, tokens: int) -> torch.Tensor:
        rows, cols = self.latent_height // 2, self.latent_width // 2
        if tokens != rows * cols:
            raise ValueError(
                f"FLUX latents have {tokens} tokens; policy.height x policy.width ="
                f" {self.config.height}x{self.config.width} packs into {rows * cols}"
            )
        key = ("img", tokens)
        if key not in self._ids_cache:
            self._ids_cache[key] = latent_image_ids(rows, cols, self.runtime.device)
        return self._ids_cache[key]

    def _text_ids(self, length: int) -> torch.Tensor:
        # FluxPipeline.encode_prompt: text tokens all sit at position (0, 0, 0).
        key = ("txt", length)
        if key not in self._ids_cache:
            self._ids_cache[key] = torch.zeros(length, 3, device=self.runtime.device)
        return self._ids_cache[key]

    def _vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return unpack_latents(latents, self.latent_height, self.latent_width)
