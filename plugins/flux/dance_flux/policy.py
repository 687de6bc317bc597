"""The FLUX.1 policy: a rectified-flow text-to-image transformer (FLUX.1-dev, FLUX.1-schnell).

Prompt encoding, noise, latent packing, position ids and decoding follow diffusers'
``FluxPipeline`` (pipelines/flux/pipeline_flux.py) so that a policy and the pipeline given the same
inputs compute the same tensors, and trained weights load back into the pipeline.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dance.config import option, validate
from dance.errors import ConfigError, UsageError
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
from dance_flux.layout import resolve_model

logger = logging.getLogger(__name__)


@dataclass
class FluxConfig:
    """Options of the FLUX policy."""

    model: str = option(
        "",
        "Diffusers FLUX checkpoint: a local directory, or a Hugging Face repo id already in the "
        "local cache (e.g. black-forest-labs/FLUX.1-dev); nothing is downloaded.",
    )
    height: int = option(720, "Image height in pixels (a multiple of 16).", gt=0)
    width: int = option(720, "Image width in pixels (a multiple of 16).", gt=0)
    guidance: float = option(
        3.5,
        "Distilled guidance scale fed to the transformer's guidance embedding (FLUX.1-dev); "
        "ignored, with a warning, when the transformer has none (FLUX.1-schnell).",
        ge=0.0,
    )
    max_sequence_length: int = option(
        512, "T5 prompt length in tokens: prompts are padded and truncated to it.", ge=1, le=512
    )
    finetune: str = finetune_option("transformer")
    lora_rank: int = lora_rank_option(128)
    lora_alpha: float = lora_alpha_option(256.0)
    lora_targets: list[str] = option(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "Transformer modules (name suffixes) that get LoRA adapters: attention q/k/v/out, as in "
        "DanceGRPO's FLUX recipe.",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute transformer blocks in the backward pass to save activation memory."
    )
    offload_frozen: bool = option(
        False,
        "On CUDA, keep the CLIP and T5 encoders and the VAE in CPU memory and move each to the "
        "GPU only while it runs (T5-XXL alone is 9.5 GB in bf16; prompts are cached, so it runs "
        "only for new prompts).",
    )
    cache_prompts: bool = option(
        True, "Encode each distinct prompt once and reuse its embeddings (frozen encoders)."
    )
    prompt_cache_size: int = option(
        256,
        "Most prompts kept in the embedding cache, least recently used dropped first "
        "(FLUX.1 uses 4 MiB of device memory per cached prompt at 512 tokens in bf16).",
        ge=1,
    )

    def check(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % 16:
                raise ConfigError(
                    f"policy.{name} must be a multiple of 16 (VAE factor 8 x 2x2 latent packing),"
                    f" got {value}"
                )
        check_finetune_options(self)


# --- FluxPipeline's latent layout ------------------------------------------------------------


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)*(w/2), C*4]: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, S, C*4] -> [B, C, h, w] for a latent of h x w (FluxPipeline._unpack_latents)."""
    b, _, channels = latents.shape
    latents = latents.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, channels // 4, h, w)


def latent_image_ids(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """[rows*cols, 3] position ids (0, row, col) of the packed tokens
    (FluxPipeline._prepare_latent_image_ids); kept in fp32, which holds them exactly."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device)


class FluxPolicy(FinetunedPolicy):
    """FLUX.1 text-to-image: CLIP + T5 prompt encoders, a flow-matching transformer over packed
    2x2 latent patches, and a 16-channel VAE. Predicts the flow velocity."""

    name = "flux"
    config_class = FluxConfig
    modality = "image"
    prediction_type = "flow"
    # LoRA saves through FluxPipeline.save_lora_weights (its load_lora_weights reads it back); a
    # full fine-tune is transformer/, a FluxTransformer2DModel.
    trained_network = TrainedNetwork(component="transformer", pipeline="FluxPipeline", model="FLUX")
    block_classes = imported_classes(
        "diffusers.models.transformers.transformer_flux",
        "FluxTransformerBlock",
        "FluxSingleTransformerBlock",
    )

    def __init__(self, config: FluxConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.model:
            raise UsageError(
                "policy 'flux' needs a model: pass --model PATH_OR_REPO_ID or set policy.model to"
                " a diffusers FLUX directory or a cached repo id (black-forest-labs/FLUX.1-dev)"
            )
        validate(config, prefix="policy.")
        self.path = resolve_model(config.model)
        self._offload = FrozenOffload(config.offload_frozen, runtime.device)
        self._load_components()

        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._ids_cache: dict[tuple[str, int], torch.Tensor] = {}

    # --- loading -------------------------------------------------------------------------------

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizerFast, T5EncoderModel, T5TokenizerFast

        cfg, path = self.config, self.path
        frozen = self.runtime.frozen_dtype

        def freeze(module: torch.nn.Module) -> Any:
            return module.requires_grad_(False).eval().to(self._offload.home)

        self.tokenizer = load_tokenizer(CLIPTokenizerFast, path / "tokenizer")
        self.tokenizer_2 = load_tokenizer(T5TokenizerFast, path / "tokenizer_2")
        self.text_encoder = freeze(
            load_pretrained(CLIPTextModel, path / "text_encoder", **transformers_dtype(frozen))
        )
        self.text_encoder_2 = freeze(
            load_pretrained(T5EncoderModel, path / "text_encoder_2", **transformers_dtype(frozen))
        )
        self.vae = freeze(load_pretrained(AutoencoderKL, path / "vae", torch_dtype=frozen))
        # FluxPipeline.__init__: 2 ** (number of VAE blocks - 1), 8 for the real VAE.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        factor = self.vae_scale_factor * 2
        if cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"policy.height and policy.width must be multiples of {factor} for {path},"
                f" got {cfg.height}x{cfg.width}"
            )
        # Latent grid as FluxPipeline.prepare_latents computes it; tokens are its 2x2 patches.
        self.latent_height = 2 * (cfg.height // factor)
        self.latent_width = 2 * (cfg.width // factor)

        # LoRA adapters or the whole transformer; self.trained keeps the reference model and
        # saves and loads what trains.
        self.transformer = self.load_network(FluxTransformer2DModel, path / "transformer")
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

        self.latent_channels = self.transformer.config.in_channels // 4
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        if not self.guidance_embeds:  # info, not a warning: schnell-style models are legitimate
            logger.info(
                "the FLUX transformer in %s has no guidance embedding (guidance_embeds=false, as in"
                " FLUX.1-schnell): policy.guidance=%s is ignored",
                path,
                cfg.guidance,
            )

    # --- Policy interface ----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        """T5 token embeddings [B, S, D] and CLIP pooled embeddings [B, D] per prompt, as
        FluxPipeline.encode_prompt computes them; each distinct text is encoded once."""
        if any(p.image is not None for p in prompts):
            raise UsageError("policy 'flux' is text-to-image: prompts must not carry an image")
        texts = [p.text for p in prompts]
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if not (self.config.cache_prompts and t in self._prompt_cache)]
        if todo:
            embeds, pooled = self._encode_texts(todo)
            fresh = {t: (embeds[i], pooled[i]) for i, t in enumerate(todo)}
        rows = []
        for text in texts:
            if text in fresh:
                rows.append(fresh[text])
            else:
                self._prompt_cache.move_to_end(text)
                rows.append(self._prompt_cache[text])
        if self.config.cache_prompts:
            for text, (embeds, pooled) in fresh.items():
                # Own copies: a row view would keep its whole encoder batch alive in the cache.
                self._prompt_cache[text] = (embeds.clone(), pooled.clone())
            while len(self._prompt_cache) > self.config.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        return Conditioning(
            prompt_embeds=torch.stack([r[0] for r in rows]),
            pooled_prompt_embeds=torch.stack([r[1] for r in rows]),
        )

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """FluxPipeline._get_clip_prompt_embeds and _get_t5_prompt_embeds for a list of texts."""
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
        self._warn_truncated(texts, clip_len, t5_len)
        return embeds, pooled

    def _warn_truncated(self, texts: list[str], clip_len: int, t5_len: int) -> None:
        # As FluxPipeline: say so when a prompt is cut (CLIP at 77 tokens is common and harmless).
        for tokenizer, limit, label in (
            (self.tokenizer, clip_len, "CLIP"),
            (self.tokenizer_2, t5_len, "T5"),
        ):
            longest = max(len(ids) for ids in tokenizer(texts, verbose=False).input_ids)
            if longest > limit:
                logger.warning(
                    "%s truncates prompts to %d tokens; the longest here has %d",
                    label,
                    limit,
                    longest,
                )

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Packed fp32 noise [B, S, C*4], drawn as FluxPipeline.prepare_latents draws it (unpacked
        [B, C, h, w] randn, then packed): the same generator gives the pipeline's noise."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch_size, self.latent_channels, self.latent_height, self.latent_width)
        # randn_tensor draws on the generator's device (a CPU generator stays reproducible on GPU).
        noise = randn_tensor(
            shape, generator=generator, device=self.runtime.device, dtype=torch.float32
        )
        return pack_latents(noise)

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
            guidance = torch.full((batch,), self.config.guidance, device=device)
        with self.trained.autocast_context():
            out = model(
                hidden_states=latents.to(device, dtype),
                encoder_hidden_states=prompt_embeds,
                pooled_projections=cond["pooled_prompt_embeds"].to(device, dtype),
                timestep=timesteps.to(device, torch.float32).expand(batch),
                img_ids=self._image_ids(tokens),
                txt_ids=self._text_ids(prompt_embeds.shape[1]),
                guidance=guidance,
                return_dict=False,
            )[0]
        return out.float()

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

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [0, 1] (fp32), as FluxPipeline's output stage: unpack, undo the
        VAE normalisation, decode, map [-1, 1] to [0, 1]."""
        vae_config = self.vae.config
        x = unpack_latents(latents, self.latent_height, self.latent_width)
        x = x / vae_config.scaling_factor + (vae_config.shift_factor or 0.0)
        with self._offload.on_device(self.vae):
            image = self.vae.decode(x.to(self.runtime.device, self.vae.dtype), return_dict=False)
        image = image[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)
