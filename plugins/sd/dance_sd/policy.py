"""The Stable Diffusion 1.x policy: a latent diffusion UNet predicting noise (SD 1.4, SD 1.5).

Prompt encoding, classifier-free guidance, the UNet call and decoding follow diffusers'
``StableDiffusionPipeline`` (pipelines/stable_diffusion/pipeline_stable_diffusion.py), so that the
policy and the pipeline given the same inputs compute the same tensors, and trained weights load
back into the pipeline (``load_lora_weights`` for LoRA, ``unet/`` for a full fine-tune).
Guidance runs in rollouts and in training alike, as in DanceGRPO's and DDPO's SD scripts
(``train.cfg = True``): the trained output is ``eps_u + s * (eps_c - eps_u)``.
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
from dance_sd.layout import resolve_model

logger = logging.getLogger(__name__)


@dataclass
class SDConfig:
    """Options of the Stable Diffusion policy."""

    model: str = option(
        "",
        "Diffusers Stable Diffusion 1.x checkpoint: a local directory, or a Hugging Face repo id "
        "already in the local cache (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5); nothing "
        "is downloaded.",
    )
    height: int = option(512, "Image height in pixels (a multiple of 8, the VAE factor).", gt=0)
    width: int = option(512, "Image width in pixels (a multiple of 8, the VAE factor).", gt=0)
    guidance_scale: float = option(
        5.0,
        "Classifier-free guidance scale s in eps_u + s * (eps_c - eps_u), used in rollouts and "
        "training alike (DanceGRPO: 5.0); 1 or less turns guidance off (one UNet pass, as the "
        "pipeline does).",
        ge=0.0,
    )
    finetune: str = finetune_option("UNet", ", as DanceGRPO's SD script does")
    lora_rank: int = lora_rank_option(
        4, " (DDPO's SD LoRA: 4, the diffusers LoRA attention processor default)"
    )
    lora_alpha: float = lora_alpha_option(4.0, " (DDPO: alpha = r)")
    lora_targets: list[str] = option(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "UNet modules (name suffixes) that get LoRA adapters: the attention q/k/v/out projections "
        "of every self- and cross-attention layer, as DDPO's LoRA attention processors.",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute UNet blocks in the backward pass to save activation memory."
    )
    cache_prompts: bool = option(
        True, "Encode each distinct prompt once and reuse its embeddings (frozen text encoder)."
    )
    prompt_cache_size: int = option(
        1024,
        "Most prompts kept in the embedding cache, least recently used dropped first "
        "(SD 1.x: 77 x 768 values, 115 KiB per prompt in bf16).",
        ge=1,
    )
    offload_frozen: bool = option(
        False,
        "Keep the text encoder and the VAE in CPU memory and move each to the GPU only while it "
        "encodes or decodes (frees about 0.4 GB in bf16); no effect on CPU.",
    )
    decode_batch_size: int = option(
        8, "Images decoded per VAE pass (the VAE decoder's activations are large at 512 px).", ge=1
    )

    def check(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % 8:
                raise ConfigError(
                    f"policy.{name} must be a multiple of 8 (the SD VAE factor), got {value}"
                )
        check_finetune_options(self)


class SDPolicy(FinetunedPolicy):
    """Stable Diffusion 1.x text-to-image: a CLIP text encoder, a UNet over 4-channel latents
    predicting the noise, and the SD VAE. Classifier-free guidance with the empty prompt."""

    name = "sd"
    config_class = SDConfig
    modality = "image"
    prediction_type = "epsilon"
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
        if not config.model:
            raise UsageError(
                "policy 'sd' needs a model: pass --model PATH_OR_REPO_ID or set policy.model to a"
                " diffusers Stable Diffusion 1.x directory or a cached repo id"
                " (stable-diffusion-v1-5/stable-diffusion-v1-5)"
            )
        validate(config, prefix="policy.")
        self.path = resolve_model(config.model)
        self._offload = FrozenOffload(config.offload_frozen, runtime.device)
        self._load_components()

        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # The unconditional (empty-prompt) embedding [1, 77, D], encoded once: every guided UNet
        # call pairs it with the prompts (StableDiffusionPipeline.encode_prompt with
        # negative_prompt=None encodes "" padded to the prompt length).
        self._uncond = self._encode_texts([""])

    # --- loading -------------------------------------------------------------------------------

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        cfg, path = self.config, self.path
        frozen = self.runtime.frozen_dtype
        home = self._offload.home

        def freeze(module: torch.nn.Module, where: torch.device) -> Any:
            return module.requires_grad_(False).eval().to(where)

        self.tokenizer = load_tokenizer(CLIPTokenizer, path / "tokenizer")
        self.text_encoder = freeze(
            load_pretrained(CLIPTextModel, path / "text_encoder", **transformers_dtype(frozen)),
            home,
        )
        self.vae = freeze(load_pretrained(AutoencoderKL, path / "vae", torch_dtype=frozen), home)
        # StableDiffusionPipeline.__init__: 2 ** (number of VAE blocks - 1), 8 for SD's VAE.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        factor = self.vae_scale_factor
        if cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"policy.height and policy.width must be multiples of {factor} (the VAE factor of"
                f" {path}), got {cfg.height}x{cfg.width}"
            )

        # LoRA adapters or the whole UNet; self.trained keeps the reference model and saves and
        # loads what trains.
        self.unet = self.load_network(UNet2DConditionModel, path / "unet")
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.latent_shape = (
            self.unet.config.in_channels,
            cfg.height // factor,
            cfg.width // factor,
        )

    # --- Policy interface ----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        """CLIP last hidden states [B, 77, D] per prompt, as StableDiffusionPipeline.encode_prompt
        computes them; each distinct text is encoded once (and cached, least recently used out)."""
        if any(p.image is not None for p in prompts):
            raise UsageError("policy 'sd' is text-to-image: prompts must not carry an image")
        texts = [p.text for p in prompts]
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if not (self.config.cache_prompts and t in self._prompt_cache)]
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            embeds = self._encode_texts(todo)
            fresh = {t: embeds[i] for i, t in enumerate(todo)}
        rows = []
        for text in texts:
            if text in fresh:
                rows.append(fresh[text])
            else:
                self._prompt_cache.move_to_end(text)
                rows.append(self._prompt_cache[text])
        if self.config.cache_prompts:
            for text, embeds in fresh.items():
                # An own copy: a row view would keep its whole encoder batch alive in the cache.
                self._prompt_cache[text] = embeds.clone()
            while len(self._prompt_cache) > self.config.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        return Conditioning(prompt_embeds=torch.stack(rows))

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """StableDiffusionPipeline.encode_prompt (clip_skip None): pad and truncate to 77 tokens,
        take the text encoder's last hidden state (after its final layer norm)."""
        device = self.runtime.device
        length = self.tokenizer.model_max_length  # 77: CLIP's position table
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        longest = max(len(ids) for ids in self.tokenizer(texts, verbose=False).input_ids)
        if longest > length:
            logger.warning(
                "CLIP truncates prompts to %d tokens; the longest has %d", length, longest
            )
        encoder = self.text_encoder
        with self._offload.on_device(encoder):
            # The pipeline passes the attention mask only when the encoder's config asks for it
            # (SD's does not: padding tokens are attended to, as in training).
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(device)
            embeds = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return embeds.to(self.text_encoder.dtype)

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal fp32 latents [B, 4, H/8, W/8], drawn as
        StableDiffusionPipeline.prepare_latents draws them (DDIM's init_noise_sigma is 1)."""
        from diffusers.utils.torch_utils import randn_tensor

        # randn_tensor draws on the generator's device (a CPU generator stays reproducible on GPU).
        return randn_tensor(
            (batch_size, *self.latent_shape),
            generator=generator,
            device=self.runtime.device,
            dtype=torch.float32,
        )

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
        guided = self.config.guidance_scale > 1.0
        if guided:
            uncond = self._uncond.to(device, dtype).expand(batch, -1, -1)
            x, t, embeds = torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, embeds])
        with self.trained.autocast_context():
            eps = model(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
        eps = eps.float()
        if not guided:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + self.config.guidance_scale * (eps_cond - eps_uncond)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [0, 1] (fp32), as the pipeline's output stage: undo the VAE
        scaling factor, decode, map [-1, 1] to [0, 1]; in chunks of decode_batch_size."""
        scale = self.vae.config.scaling_factor
        images = []
        vae = self.vae
        with self._offload.on_device(vae):
            for chunk in latents.split(self.config.decode_batch_size):
                x = chunk.to(self.runtime.device, vae.dtype) / scale
                images.append(vae.decode(x, return_dict=False)[0].float())
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)
