"""What the HunyuanVideo family shares: the Llama + CLIP prompt encoding, the video VAE, the
transformer call and the latent geometry (the rest is dance.diffusers_policy's).

Prompt encoding, noise, the transformer call and decoding follow diffusers' ``HunyuanVideoPipeline``
(pipelines/hunyuan_video/pipeline_hunyuan_video.py; ``HunyuanSkyreelsImageToVideoPipeline`` copies
the same methods), so that a policy and the pipeline given the same inputs compute the same tensors
and trained LoRA weights load back into the pipeline with ``load_lora_weights``.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dance.config import option
from dance.diffusers_policy import (
    DiffusersPolicy,
    DiffusersPolicyConfig,
    check_video_frames,
    embedded_guidance,
    guided_forward,
    override,
    warn_truncated,
)
from dance.errors import ConfigError, ModelLayoutError
from dance.interfaces import Conditioning, imported_classes
from dance.models.finetune import TrainedNetwork
from dance_hunyuan_video.layout import resolve_model, resolve_transformer, transformer_config
from dance_hunyuan_video.prompting import DEFAULT_CROP_START, DEFAULT_TEMPLATE

# The pipeline's scheduler timesteps are sigma * num_train_timesteps (1000 in
# FlowMatchEulerDiscreteScheduler), and its embedded guidance is guidance_scale * 1000.
TIMESTEP_SCALE = 1000.0
GUIDANCE_SCALE = 1000.0
# HunyuanVideoPipeline._get_llama_prompt_embeds: the third hidden state from the end
# (num_hidden_layers_to_skip = 2).
LLAMA_LAYERS_TO_SKIP = 2
CLIP_LENGTH = 77  # HunyuanVideoPipeline.encode_prompt: CLIP reads 77 tokens
TEXT_KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")

logger = logging.getLogger(__name__)


@dataclass
class HunyuanCommonConfig(DiffusersPolicyConfig):
    """Options every HunyuanVideo-family policy has; defaults are HunyuanVideo text-to-video's
    (DanceGRPO's run, scripts/finetune/finetune_hunyuan_grpo.sh: --h 480 --w 480 --t 53, as in
    the paper), which other policies of the family override."""

    size_multiple = 16
    size_reason = "VAE factor 8 x patch 2"

    height: int = override("height", 480)
    width: int = override("width", 480)
    gradient_checkpointing: bool = override(
        "gradient_checkpointing", True, note=" DanceGRPO trains HunyuanVideo with it."
    )
    offload_frozen: bool = override(
        "offload_frozen", True, note=" The Llama encoder alone is 15 GiB in bf16."
    )
    prompt_cache_size: int = override(
        "prompt_cache_size", 256, note=" 2 MiB per prompt at 256 Llama tokens in bf16."
    )
    transformer: str = option(
        "",
        "A transformer folder (config.json + diffusion_pytorch_model*.safetensors) or cached repo"
        " id that replaces the checkpoint's transformer/ (e.g. Skywork/SkyReels-V1-Hunyuan-I2V);"
        " empty = the checkpoint's own.",
    )
    max_sequence_length: int = option(
        256,
        "Llama prompt length in tokens after the template is cropped off (the pipeline's 256):"
        " prompts are padded and truncated to it.",
        ge=1,
    )
    prompt_template: str = option(
        DEFAULT_TEMPLATE,
        "Template the Llama encoder reads, '{}' standing for the prompt (HunyuanVideo's).",
    )
    crop_start: int = option(
        DEFAULT_CROP_START,
        "Tokens of the template before the prompt (BOS included), cropped off the Llama embeddings;"
        " 95 for the default template and HunyuanVideo's Llama 3 tokenizer.",
        ge=0,
    )
    vae_tiling: bool = option(
        True,
        "Decode (and encode) with the VAE's spatial tiles of 256 px, as the pipeline examples do;"
        " frames are always decoded in temporal tiles. No effect on videos of 256 px or less.",
    )
    num_frames: int = option(
        53, "Frames per video, 4k+1 (the VAE keeps the first and compresses the rest 4x).", ge=1
    )
    guidance: float = option(
        6.0,
        "Embedded guidance scale fed to the transformer's guidance embedding as scale x 1000"
        " (HunyuanVideoPipeline's default 6.0).",
        ge=0.0,
    )

    def check(self) -> None:
        super().check()
        check_video_frames(self.num_frames)
        if self.prompt_template.count("{}") != 1:
            raise ConfigError("policy.prompt_template must contain '{}' (the prompt) exactly once")


class HunyuanFamilyPolicy(DiffusersPolicy):
    """A HunyuanVideo-family video policy: Llama + CLIP prompt encoders, a flow-matching video
    transformer over [B, C, F, h, w] latents and the causal 3D VAE. Predicts the flow velocity.

    Subclasses say which transformer they run, what a prompt carries, and how the transformer is
    called (embedded guidance, true CFG, image latents)."""

    modality = "video"
    prediction_type = "flow"
    checkpoint_kind = "a diffusers HunyuanVideo directory"
    checkpoint_example = "hunyuanvideo-community/HunyuanVideo"
    text_keys = TEXT_KEYS
    # LoRA saves through HunyuanVideoPipeline.save_lora_weights (the family's pipelines read it
    # back with load_lora_weights); a full fine-tune is transformer/, a
    # HunyuanVideoTransformer3DModel.
    trained_network = TrainedNetwork(
        component="transformer", pipeline="HunyuanVideoPipeline", model="HunyuanVideo"
    )
    block_classes = imported_classes(
        "diffusers.models.transformers.transformer_hunyuan_video",
        "HunyuanVideoTransformerBlock",
        "HunyuanVideoSingleTransformerBlock",
        "HunyuanVideoTokenReplaceTransformerBlock",
        "HunyuanVideoTokenReplaceSingleTransformerBlock",
        "HunyuanVideoIndividualTokenRefinerBlock",
    )

    def resolve_checkpoint(self, config: Any) -> Path:
        path = resolve_model(config.model, check_transformer=not config.transformer)
        if config.transformer:
            self.transformer_path = resolve_transformer(config.transformer)
        else:
            self.transformer_path = path / "transformer"
        self._check_transformer_config(transformer_config(self.transformer_path))
        return path

    @abstractmethod
    def _check_transformer_config(self, config: dict[str, Any]) -> None:
        """Raise ModelLayoutError if the transformer is not the kind this policy runs."""

    def _transformer_kind_error(self, config: dict[str, Any], want: str) -> ModelLayoutError:
        return ModelLayoutError(
            f"the transformer in {self.transformer_path} (in_channels {config.get('in_channels')},"
            f" out_channels {config.get('out_channels')}, image_condition_type"
            f" {config.get('image_condition_type')!r}) is not {want}"
        )

    # --- loading -------------------------------------------------------------------------------

    def _load_components(self) -> None:
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizerFast, LlamaModel

        # AutoTokenizer, not the LlamaTokenizerFast that model_index.json names: with transformers
        # 5 that class rebuilds Llama 3's byte-level BPE with a SentencePiece-style pre-tokenizer,
        # which splits prompts into other tokens; AutoTokenizer reads tokenizer.json as it is.
        self.tokenizer = self.load_tokenizer(AutoTokenizer, "tokenizer")
        # The transformer masks the text tokens after the first sum(mask) ones: pad on the right.
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            raise ModelLayoutError(f"the tokenizer in {self.path / 'tokenizer'} has no pad token")
        self.tokenizer_2 = self.load_tokenizer(CLIPTokenizerFast, "tokenizer_2")
        self.text_encoder = self.load_frozen(LlamaModel, "text_encoder")
        self.text_encoder_2 = self.load_frozen(CLIPTextModel, "text_encoder_2")
        self.vae = self.load_frozen(AutoencoderKLHunyuanVideo, "vae")
        if self.config.vae_tiling:
            self.vae.enable_tiling()
        self._check_template()

        # LoRA adapters or the whole transformer; self.trained keeps the reference model and
        # saves and loads what trains.
        self.transformer = self.load_network(HunyuanVideoTransformer3DModel, self.transformer_path)
        self._set_latent_geometry()
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)

    def _check_template(self) -> None:
        """Warn when crop_start does not match the template's prefix under this tokenizer (another
        template or tokenizer): the crop would cut prompt tokens or keep template tokens."""
        prefix = self.config.prompt_template.split("{}")[0]
        counted = len(self.tokenizer(prefix).input_ids)
        if counted != self.config.crop_start:
            logger.warning(
                "policy.crop_start is %d but the prompt template's prefix is %d tokens with the"
                " tokenizer in %s; set policy.crop_start=%d unless the difference is intended",
                self.config.crop_start,
                counted,
                self.path / "tokenizer",
                counted,
            )

    def _set_latent_geometry(self) -> None:
        """Latent shape as the pipeline's prepare_latents computes it."""
        spatial = self.vae.spatial_compression_ratio
        temporal = self.vae.temporal_compression_ratio
        patch = self.transformer.config.patch_size
        self.check_size_factor(spatial * patch, f"VAE factor {spatial} x patch {patch}")
        self.latent_channels = self.transformer.config.out_channels
        if self.latent_channels != self.vae.config.latent_channels:
            raise ModelLayoutError(
                f"the transformer in {self.transformer_path} predicts {self.latent_channels}"
                f" channels but the VAE in {self.path / 'vae'} has"
                f" {self.vae.config.latent_channels} latent channels"
            )
        self.set_video_latent_shape(self.latent_channels, temporal, spatial)

    # --- prompt encoding -----------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Llama embeddings [N, S, D] with their attention mask [N, S] and CLIP pooled embeddings
        [N, D']: HunyuanVideoPipeline._get_llama_prompt_embeds and _get_clip_prompt_embeds."""
        cfg, device = self.config, self.runtime.device
        templated = [cfg.prompt_template.format(t) for t in texts]
        llama_length = cfg.max_sequence_length + cfg.crop_start
        llama = self.tokenizer(
            templated,
            max_length=llama_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        clip_ids = self.tokenizer_2(
            texts,
            padding="max_length",
            max_length=CLIP_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with self._offload.on_device(self.text_encoder, self.text_encoder_2):
            mask = llama.attention_mask.to(device)
            hidden = self.text_encoder(
                input_ids=llama.input_ids.to(device), attention_mask=mask, output_hidden_states=True
            ).hidden_states[-(LLAMA_LAYERS_TO_SKIP + 1)]
            embeds = hidden.to(self.text_encoder.dtype)[:, cfg.crop_start :]
            pooled = self.text_encoder_2(clip_ids.to(device), output_hidden_states=False)
            pooled = pooled.pooler_output.to(self.text_encoder_2.dtype)
        warn_truncated(self.tokenizer, templated, llama_length, "Llama")
        warn_truncated(self.tokenizer_2, texts, CLIP_LENGTH, "CLIP")
        return embeds, mask[:, cfg.crop_start :], pooled

    # --- prediction, decoding ------------------------------------------------------------------

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow velocity [B, C, F, h, w] (fp32) at sigma ``timesteps [B]``."""
        self.check_latents(latents)
        model, dtype = self.trained.forward_network()  # the reference inside reference()
        # The pipeline's scheduler timesteps: sigma * 1000, in fp32 (the latents' dtype).
        t = timesteps.to(self.runtime.device, torch.float32).expand(latents.shape[0])

        def forward(hidden: torch.Tensor, t: torch.Tensor, *text: torch.Tensor) -> torch.Tensor:
            return self._transformer(model, dtype, hidden, t, *text)

        with self.trained.autocast_context():
            return self._guided_forward(
                forward, latents.to(self.runtime.device), t * TIMESTEP_SCALE, cond
            )

    def _guided_forward(
        self,
        forward: Callable[..., torch.Tensor],
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
    ) -> torch.Tensor:
        """The model output (fp32), where ``forward(hidden states, timestep, *text embeddings)``
        is one transformer call and ``timestep`` is on the 0..1000 scale: with true CFG against
        the negative prompt when the policy has a ``cfg_scale`` above 1, both branches in one
        batched call, positive first (as DanceGRPO's SkyReels script); else one call (embedded
        guidance only, as HunyuanVideo text-to-video)."""
        hidden = self._hidden_states(latents, cond)
        text = [cond[k].to(latents.device) for k in TEXT_KEYS]
        scale = getattr(self.config, "cfg_scale", 1.0)
        negative = self.negative_inputs(TEXT_KEYS, text) if scale > 1.0 else text
        return guided_forward(
            forward, (hidden, timestep, *text), (hidden, timestep, *negative), scale, False
        )

    def _hidden_states(self, latents: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """What the transformer reads as ``hidden_states``: the noisy latents here."""
        return latents

    def _transformer(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """One transformer call as HunyuanVideoPipeline.__call__ makes it: inputs in the
        transformer's dtype, the embedded guidance scale * 1000 computed in the dtype of the
        base weights (bf16 on GPU: 6.0 becomes 6016, as in the pipeline and DanceGRPO)."""
        device = self.runtime.device
        guidance = None
        if self.guidance_embeds:
            # The guidance embedder never carries LoRA: its dtype is the base weights'.
            weights = next(model.time_text_embed.guidance_embedder.parameters()).dtype
            guidance = embedded_guidance(
                self.config.guidance, hidden_states.shape[0], device, weights, GUIDANCE_SCALE
            )
        out = model(
            hidden_states=hidden_states.to(dtype),
            timestep=timestep,
            encoder_hidden_states=prompt_embeds.to(device, dtype),
            encoder_attention_mask=prompt_attention_mask.to(device, dtype),
            pooled_projections=pooled_prompt_embeds.to(device, dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.float()

    def _decode_chunk(self, batch: int) -> int:
        return 1  # one video at a time bounds the decoder's activation memory
