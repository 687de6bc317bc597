"""What the HunyuanVideo family shares: loading the diffusers layout, the Llama + CLIP prompt
encoding and its cache, the video VAE, the transformer call, LoRA, the reference model and the
trained weights.

Prompt encoding, noise, the transformer call and decoding follow diffusers' ``HunyuanVideoPipeline``
(pipelines/hunyuan_video/pipeline_hunyuan_video.py; ``HunyuanSkyreelsImageToVideoPipeline`` copies
the same methods), so that a policy and the pipeline given the same inputs compute the same tensors
and trained LoRA weights load back into the pipeline with ``load_lora_weights``.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dance.config import option, validate
from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.finetune import (
    FinetunedPolicy,
    TrainedNetwork,
    check_finetune_options,
    finetune_option,
    lora_alpha_option,
    lora_rank_option,
)
from dance.interfaces import Conditioning, Prompt, Runtime, imported_classes
from dance.model_layout import load_pretrained, load_tokenizer, transformers_dtype
from dance.offload import FrozenOffload
from dance_hunyuan_video.layout import resolve_model, resolve_transformer, transformer_config
from dance_hunyuan_video.prompting import DEFAULT_CROP_START, DEFAULT_TEMPLATE

logger = logging.getLogger(__name__)
# The pipeline's scheduler timesteps are sigma * num_train_timesteps (1000 in
# FlowMatchEulerDiscreteScheduler), and its embedded guidance is guidance_scale * 1000.
TIMESTEP_SCALE = 1000.0
GUIDANCE_SCALE = 1000.0
# HunyuanVideoPipeline._get_llama_prompt_embeds: the third hidden state from the end
# (num_hidden_layers_to_skip = 2).
LLAMA_LAYERS_TO_SKIP = 2
CLIP_LENGTH = 77  # HunyuanVideoPipeline.encode_prompt: CLIP reads 77 tokens


@dataclass
class HunyuanCommonConfig:
    """Options every HunyuanVideo-family policy has; each policy's config adds ``height``,
    ``width``, ``num_frames`` and ``guidance`` with its own defaults."""

    model: str = option(
        "",
        "Diffusers HunyuanVideo checkpoint: a local directory, or a Hugging Face repo id already in"
        " the local cache (hunyuanvideo-community/HunyuanVideo); nothing is downloaded.",
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
    finetune: str = finetune_option("transformer")
    lora_rank: int = lora_rank_option(128)
    lora_alpha: float = lora_alpha_option(256.0)
    lora_targets: list[str] = option(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "Transformer modules (name suffixes) that get LoRA adapters: the attention projections of"
        " the dual-stream, single-stream and token-refiner blocks.",
    )
    gradient_checkpointing: bool = option(
        True,
        "Recompute transformer blocks in the backward pass to save activation memory (DanceGRPO"
        " trains HunyuanVideo with it).",
    )
    vae_tiling: bool = option(
        True,
        "Decode (and encode) with the VAE's spatial tiles of 256 px, as the pipeline examples do;"
        " frames are always decoded in temporal tiles. No effect on videos of 256 px or less.",
    )
    offload_frozen: bool = option(
        True,
        "On CUDA, keep the text encoders and the VAE in CPU memory and move each to the GPU only"
        " while it runs (the Llama encoder alone is 15 GiB in bf16).",
    )
    cache_prompts: bool = option(
        True, "Encode each distinct prompt once and reuse its embeddings (frozen encoders)."
    )
    prompt_cache_size: int = option(
        256,
        "Most prompts kept in the embedding cache, least recently used dropped first (2 MiB of"
        " device memory per prompt at 256 Llama tokens in bf16).",
        ge=1,
    )

    def check(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % 16:
                raise ConfigError(
                    f"policy.{name} must be a multiple of 16 (VAE factor 8 x patch 2), got {value}"
                )
        frames = self.num_frames
        if (frames - 1) % 4:
            raise ConfigError(
                f"policy.num_frames must be 4k+1 (the VAE keeps the first frame and compresses"
                f" the rest 4x), got {frames}; nearest: {frames - (frames - 1) % 4}"
            )
        if self.prompt_template.count("{}") != 1:
            raise ConfigError("policy.prompt_template must contain '{}' (the prompt) exactly once")
        check_finetune_options(self)


class LRUCache(OrderedDict):
    """A dict that drops its least recently used entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_recent(self, key: Any) -> Any:
        self.move_to_end(key)
        return self[key]

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class HunyuanFamilyPolicy(FinetunedPolicy):
    """A HunyuanVideo-family video policy: Llama + CLIP prompt encoders, a flow-matching video
    transformer over [B, C, F, h, w] latents and the causal 3D VAE. Predicts the flow velocity.

    Subclasses say how many latent channels the transformer reads per output channel, what a
    prompt carries, and how the transformer is called (embedded guidance, true CFG, image
    latents)."""

    modality = "video"
    prediction_type = "flow"
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

    def __init__(self, config: HunyuanCommonConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.model:
            raise UsageError(
                f"policy '{self.name}' needs a model: pass --model PATH_OR_REPO_ID or set"
                " policy.model to a diffusers HunyuanVideo directory or a cached repo id"
                " (hunyuanvideo-community/HunyuanVideo)"
            )
        validate(config, prefix="policy.")
        self.path = resolve_model(config.model, check_transformer=not config.transformer)
        if config.transformer:
            self.transformer_path = resolve_transformer(config.transformer)
        else:
            self.transformer_path = self.path / "transformer"
        self._check_transformer_config(transformer_config(self.transformer_path))
        # Frozen parts live on the CPU between uses when offloading (CUDA only: on the CPU there
        # is nothing to gain).
        self._offload = FrozenOffload(config.offload_frozen, runtime.device)
        self._load_components()
        self._text_cache: LRUCache = LRUCache(config.prompt_cache_size)

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

        cfg, path = self.config, self.path
        frozen = self.runtime.frozen_dtype
        home = self._offload.home

        def freeze(module: torch.nn.Module) -> Any:
            return module.requires_grad_(False).eval().to(home)

        # AutoTokenizer, not the LlamaTokenizerFast that model_index.json names: with transformers
        # 5 that class rebuilds Llama 3's byte-level BPE with a SentencePiece-style pre-tokenizer,
        # which splits prompts into other tokens; AutoTokenizer reads tokenizer.json as it is.
        self.tokenizer = load_tokenizer(AutoTokenizer, path / "tokenizer")
        # The transformer masks the text tokens after the first sum(mask) ones: pad on the right.
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            raise ModelLayoutError(f"the tokenizer in {path / 'tokenizer'} has no pad token")
        self.tokenizer_2 = load_tokenizer(CLIPTokenizerFast, path / "tokenizer_2")
        self.text_encoder = freeze(
            load_pretrained(LlamaModel, path / "text_encoder", **transformers_dtype(frozen))
        )
        self.text_encoder_2 = freeze(
            load_pretrained(CLIPTextModel, path / "text_encoder_2", **transformers_dtype(frozen))
        )
        self.vae = freeze(
            load_pretrained(AutoencoderKLHunyuanVideo, path / "vae", torch_dtype=frozen)
        )
        if cfg.vae_tiling:
            self.vae.enable_tiling()
        self._check_template()

        # LoRA adapters or the whole transformer; self.trained keeps the reference model and
        # saves and loads what trains.
        self.transformer = self.load_network(HunyuanVideoTransformer3DModel, self.transformer_path)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
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
        cfg = self.config
        spatial = self.vae.spatial_compression_ratio
        temporal = self.vae.temporal_compression_ratio
        patch = self.transformer.config.patch_size
        factor = spatial * patch
        if cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"policy.height and policy.width must be multiples of {factor} (VAE factor"
                f" {spatial} x patch {patch}) for {self.path}, got {cfg.height}x{cfg.width}"
            )
        self.latent_channels = self.transformer.config.out_channels
        if self.latent_channels != self.vae.config.latent_channels:
            raise ModelLayoutError(
                f"the transformer in {self.transformer_path} predicts {self.latent_channels}"
                f" channels but the VAE in {self.path / 'vae'} has"
                f" {self.vae.config.latent_channels} latent channels"
            )
        self.latent_frames = (cfg.num_frames - 1) // temporal + 1
        self.latent_height = cfg.height // spatial
        self.latent_width = cfg.width // spatial

    # --- prompt encoding -----------------------------------------------------------------------

    def _check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Raise UsageError for prompts this policy cannot take (images where none belong...)."""

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        self._check_prompts(prompts)
        return Conditioning(
            self._encode_texts([p.text for p in prompts]), **self._encode_extra(prompts)
        )

    def _encode_extra(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Conditioning beyond the text (image latents for image-to-video)."""
        return {}

    def _encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Llama embeddings [B, S, D] with their attention mask [B, S] and CLIP pooled embeddings
        [B, D'] per text, each distinct text encoded once (and kept in the LRU cache)."""
        use_cache = self.config.cache_prompts
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if not (use_cache and t in self._text_cache)]
        fresh: dict[str, tuple[torch.Tensor, ...]] = {}
        if todo:
            embeds, mask, pooled = self._run_text_encoders(todo)
            # Own copies: a row view would keep its whole encoder batch alive in the cache.
            fresh = {
                t: (embeds[i].clone(), mask[i].clone(), pooled[i].clone())
                for i, t in enumerate(todo)
            }
        rows = [fresh[t] if t in fresh else self._text_cache.get_recent(t) for t in texts]
        if use_cache:
            for text, row in fresh.items():
                self._text_cache.put(text, row)
        return {
            "prompt_embeds": torch.stack([r[0] for r in rows]),
            "prompt_attention_mask": torch.stack([r[1] for r in rows]),
            "pooled_prompt_embeds": torch.stack([r[2] for r in rows]),
        }

    def _run_text_encoders(
        self, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HunyuanVideoPipeline._get_llama_prompt_embeds and _get_clip_prompt_embeds."""
        cfg, device = self.config, self.runtime.device
        templated = [cfg.prompt_template.format(t) for t in texts]
        llama = self.tokenizer(
            templated,
            max_length=cfg.max_sequence_length + cfg.crop_start,
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
        self._warn_truncated(templated, texts)
        return embeds, mask[:, cfg.crop_start :], pooled

    def _warn_truncated(self, templated: list[str], texts: list[str]) -> None:
        # As the pipeline: say so when a prompt is cut (CLIP at 77 tokens is common and harmless).
        cfg = self.config
        for tokenizer, batch, limit, label in (
            (self.tokenizer, templated, cfg.max_sequence_length + cfg.crop_start, "Llama"),
            (self.tokenizer_2, texts, CLIP_LENGTH, "CLIP"),
        ):
            longest = max(len(ids) for ids in tokenizer(batch, verbose=False).input_ids)
            if longest > limit:
                logger.warning(
                    "%s truncates prompts to %d tokens; the longest here has %d",
                    label,
                    limit,
                    longest,
                )

    # --- noise, prediction, decoding -----------------------------------------------------------

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """fp32 noise [B, C, F, h, w], drawn as the pipeline's prepare_latents draws it: the same
        generator gives the pipeline's noise."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (
            batch_size,
            self.latent_channels,
            self.latent_frames,
            self.latent_height,
            self.latent_width,
        )
        # randn_tensor draws on the generator's device (a CPU generator stays reproducible on GPU).
        return randn_tensor(
            shape, generator=generator, device=self.runtime.device, dtype=torch.float32
        )

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow velocity [B, C, F, h, w] (fp32) at sigma ``timesteps [B]``."""
        expected = (self.latent_channels, self.latent_frames, self.latent_height, self.latent_width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"latents of shape {tuple(latents.shape)} do not match policy.num_frames x height x"
                f" width = {self.config.num_frames}x{self.config.height}x{self.config.width}, whose"
                f" latents are [B, {', '.join(map(str, expected))}]"
            )
        model, dtype = self.trained.forward_network()  # the reference inside reference()
        # The pipeline's scheduler timesteps: sigma * 1000, in fp32 (the latents' dtype).
        t = timesteps.to(self.runtime.device, torch.float32).expand(latents.shape[0])
        with self.trained.autocast_context():
            return self._guided_forward(
                model, dtype, latents.to(self.runtime.device), t * TIMESTEP_SCALE, cond
            )

    @abstractmethod
    def _guided_forward(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
    ) -> torch.Tensor:
        """The model output (fp32) with this policy's guidance; ``timestep`` is on the 0..1000
        scale."""

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
            scale = torch.full((hidden_states.shape[0],), self.config.guidance, dtype=weights)
            guidance = scale.to(device) * GUIDANCE_SCALE
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

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [0, 1] (fp32), as the pipeline's output stage: undo the VAE
        scaling, decode (temporal tiles, and spatial tiles with vae_tiling), map [-1, 1] to
        [0, 1]. One video at a time, which bounds the decoder's activation memory."""
        vae = self.vae
        videos = []
        with self._offload.on_device(vae):
            for row in latents:
                z = row[None].to(self.runtime.device, vae.dtype) / vae.config.scaling_factor
                videos.append(vae.decode(z, return_dict=False)[0].float())
        return (torch.cat(videos) / 2 + 0.5).clamp(0, 1)
