"""The Stable Diffusion 3 / 3.5 policy: a rectified-flow MMDiT predicting the velocity.

Prompt encoding (two CLIP encoders and T5), noise, the transformer call with classifier-free
guidance and decoding follow diffusers' ``StableDiffusion3Pipeline``
(pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py), so that the policy and the pipeline
given the same inputs compute the same tensors, and trained LoRA weights load back with the
pipeline's ``load_lora_weights``. Guidance runs in rollouts and in training alike, against the
empty prompt, as Flow-GRPO trains SD3.5 (``config.train.cfg = True``, guidance 4.5): the trained
output is ``v_u + s * (v_c - v_u)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dance.config import option
from dance.diffusers_policy import DiffusersPolicy, DiffusersPolicyConfig, override
from dance.diffusers_policy.config import JOINT_ATTENTION_LORA_TARGETS
from dance.diffusers_policy.guidance import guided_forward
from dance.diffusers_policy.policy import vae_scale_factor, warn_truncated
from dance.interfaces import Conditioning, Runtime, imported_classes
from dance.models.finetune import TrainedNetwork
from dance_sd3 import layout

# The pipeline's scheduler timesteps are sigma * num_train_timesteps (1000 in
# FlowMatchEulerDiscreteScheduler); the transformer reads those.
TIMESTEP_SCALE = 1000.0
# _get_clip_prompt_embeds with clip_skip None: the penultimate hidden state.
CLIP_HIDDEN_STATE = -2


@dataclass
class SD3Config(DiffusersPolicyConfig):
    """Options of the Stable Diffusion 3 policy; defaults are Flow-GRPO's SD3.5-Medium ones
    (scripts/train_sd3.py and config/grpo.py of github.com/yifan123/flow_grpo)."""

    size_multiple = 16
    size_reason = "VAE factor 8 x patch 2"

    lora_rank: int = override("lora_rank", 32, " Flow-GRPO's SD3.5 LoRA: 32.")
    lora_alpha: float = override("lora_alpha", 64.0, " Flow-GRPO: 64.")
    lora_targets: list[str] = override(
        "lora_targets",
        list(JOINT_ATTENTION_LORA_TARGETS),
        " Here the joint attention's image and text projections, as Flow-GRPO (not SD3.5's second"
        " image-only attention, attn2).",
    )
    guidance_scale: float = option(
        4.5,
        "Classifier-free guidance scale s in v_u + s * (v_c - v_u) against the negative prompt,"
        " used in rollouts and training alike (Flow-GRPO's SD3.5 setting: 4.5); 1 or less turns"
        " guidance off (one transformer pass).",
        ge=0.0,
    )
    negative_prompt: str = option(
        "", "Prompt of the unconditional branch of the guidance (Flow-GRPO: the empty prompt)."
    )
    max_sequence_length: int = option(
        128,
        "T5 prompt length in tokens: prompts are padded and truncated to it (Flow-GRPO: 128; the"
        " pipeline's default is 256).",
        ge=1,
        le=512,
    )


class SD3Policy(DiffusersPolicy):
    """Stable Diffusion 3 / 3.5 text-to-image: two CLIP encoders and T5, an MMDiT over 2x2
    patches of 16-channel latents predicting the flow velocity, and the SD3 VAE."""

    name = "sd3"
    config_class = SD3Config
    modality = "image"
    prediction_type = "flow"
    block_classes = imported_classes("diffusers.models.attention", "JointTransformerBlock")
    checkpoint_kind = "a diffusers Stable Diffusion 3 directory"
    checkpoint_example = "stabilityai/stable-diffusion-3.5-medium"
    resolve_model = staticmethod(layout.resolve_model)
    text_keys = ("prompt_embeds", "pooled_prompt_embeds")
    # LoRA saves through StableDiffusion3Pipeline.save_lora_weights (its load_lora_weights reads
    # it back); a full fine-tune is transformer/, an SD3Transformer2DModel.
    trained_network = TrainedNetwork(
        component="transformer", pipeline="StableDiffusion3Pipeline", model="SD3"
    )

    def __init__(self, config: SD3Config, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if config.guidance_scale > 1.0:
            # Encoded once at load: every guided call pairs it with the prompts.
            self.negative_conditioning()

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import (
            CLIPTextModelWithProjection,
            CLIPTokenizer,
            T5EncoderModel,
            T5TokenizerFast,
        )

        self.tokenizer = self.load_tokenizer(CLIPTokenizer, "tokenizer")
        self.tokenizer_2 = self.load_tokenizer(CLIPTokenizer, "tokenizer_2")
        self.tokenizer_3 = self.load_tokenizer(T5TokenizerFast, "tokenizer_3")
        self.text_encoder = self.load_frozen(CLIPTextModelWithProjection, "text_encoder")
        self.text_encoder_2 = self.load_frozen(CLIPTextModelWithProjection, "text_encoder_2")
        self.text_encoder_3 = self.load_frozen(T5EncoderModel, "text_encoder_3")
        self.vae = self.load_frozen(AutoencoderKL, "vae")
        self.vae_scale_factor = vae_scale_factor(self.vae)
        # LoRA adapters or the whole transformer; self.trained keeps the reference model and
        # saves and loads what trains.
        self.transformer = self.load_network(SD3Transformer2DModel, self.path / "transformer")
        patch = self.transformer.config.patch_size
        factor = self.vae_scale_factor
        self.check_size_factor(factor * patch, f"VAE factor {factor} x patch {patch}")
        # StableDiffusion3Pipeline.prepare_latents: [C, H / 8, W / 8].
        cfg = self.config
        channels = self.transformer.config.in_channels
        self.latent_shape = (channels, cfg.height // factor, cfg.width // factor)

    def lora_exclude(self, network: torch.nn.Module) -> list[str]:
        """The text-query projection of a block that keeps no text output (SD3's last block,
        context_pre_only): the queries of its text tokens are dropped, so an adapter there gets
        no gradient. Flow-GRPO's target list includes it; its adapter stays at zero there."""
        dead = [
            f"{name}.attn.add_q_proj"
            for name, module in network.named_modules()
            if isinstance(module, self.block_classes) and module.context_pre_only
        ]
        return self.lora_targeted(dead)

    # --- Policy interface ----------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """StableDiffusion3Pipeline.encode_prompt: the two CLIP encoders' penultimate hidden
        states side by side, zero-padded to T5's width, then T5's tokens after them
        ([N, 77 + L, D_t5]); pooled: both CLIP projections side by side ([N, D1 + D2])."""
        clip_embeds, pooled = [], []
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            hidden, projected = self._clip_embeds(tokenizer, encoder, texts)
            clip_embeds.append(hidden)
            pooled.append(projected)
        t5 = self._t5_embeds(texts)
        clip = torch.cat(clip_embeds, dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def _clip_embeds(
        self, tokenizer: object, encoder: torch.nn.Module, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """StableDiffusion3Pipeline._get_clip_prompt_embeds (clip_skip None): 77 tokens, the
        penultimate hidden state [N, 77, D] and the projected pooled output [N, D']."""
        length = tokenizer.model_max_length  # 77: CLIP's position table
        ids = tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids
        warn_truncated(tokenizer, texts, length, "CLIP")
        with self._offload.on_device(encoder):
            out = encoder(ids.to(self.runtime.device), output_hidden_states=True)
        return out.hidden_states[CLIP_HIDDEN_STATE].to(encoder.dtype), out[0].to(encoder.dtype)

    def _t5_embeds(self, texts: list[str]) -> torch.Tensor:
        """StableDiffusion3Pipeline._get_t5_prompt_embeds: [N, max_sequence_length, D]."""
        length = self.config.max_sequence_length
        ids = self.tokenizer_3(
            texts,
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        warn_truncated(self.tokenizer_3, texts, length, "T5")
        encoder = self.text_encoder_3
        with self._offload.on_device(encoder):
            embeds = encoder(ids.to(self.runtime.device))[0]
        return embeds.to(encoder.dtype)

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Guided flow velocity [B, C, h, w] (fp32) at sigma ``timesteps [B]``, called as
        StableDiffusion3Pipeline calls its transformer: timestep = sigma * 1000, one batch of
        [unconditional, conditional] inputs, then v_u + s * (v_c - v_u)."""
        self.check_latents(latents)
        model, dtype = self.trained.forward_network()  # the reference inside reference()
        device = self.runtime.device
        x = latents.to(device, dtype)
        t = timesteps.to(device, torch.float32).expand(latents.shape[0]) * TIMESTEP_SCALE
        text = [cond[k].to(device, dtype) for k in self.text_keys]

        def transformer(
            x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor
        ) -> torch.Tensor:
            with self.trained.autocast_context():
                out = model(
                    hidden_states=x,
                    timestep=t,
                    encoder_hidden_states=embeds,
                    pooled_projections=pooled,
                    return_dict=False,
                )[0]
            return out.float()

        scale = self.config.guidance_scale
        negative = self.negative_inputs(self.text_keys, text) if scale > 1.0 else text
        return guided_forward(transformer, (x, t, *text), (x, t, *negative), scale)
