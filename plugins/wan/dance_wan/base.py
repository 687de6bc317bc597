"""What every Wan policy shares: loading the diffusers layout, the UMT5 prompt encoding and its
cache, true classifier-free guidance against a negative prompt, the expert(s), the video VAE.

The model input follows diffusers' ``WanPipeline`` and ``WanImageToVideoPipeline``
(pipelines/wan/pipeline_wan.py, pipeline_wan_i2v.py), so that a policy and the pipeline given the
same inputs compute the same tensors and trained LoRA weights load back into the pipeline with
``load_lora_weights``:

- the transformer's timestep is ``sigma * 1000`` (the flow-matching scheduler's timesteps);
  Wan2.2 TI2V-5B (``expand_timesteps`` in model_index.json) takes one per latent token;
- prompts are cleaned (ftfy, HTML entities, whitespace), padded to ``max_sequence_length`` and
  the UMT5 states past each prompt's length are zeroed;
- latents are ``[B, z, (F - 1) / 4 + 1, H / 8, W / 8]`` (TI2V-5B: ``H / 16``), normalised with
  the VAE's ``latents_mean`` / ``latents_std``: decoding maps ``x * std + mean`` first;
- guidance: ``uncond + scale * (cond - uncond)`` with the negative prompt's embeddings; the
  pipeline makes two calls, this policy one call on both halves of a doubled batch.

Model-specific steps are small methods (load, encode the prompt, build the model input, predict
with guidance, decode) so that they can move onto a shared diffusers-policy base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dance.config import option
from dance.diffusers_policy import (
    DiffusersPolicy,
    DiffusersPolicyConfig,
    check_video_frames,
    guided_forward,
    override,
)
from dance.errors import ModelLayoutError
from dance.interfaces import Conditioning, Prompt, imported_classes
from dance.models.finetune import TrainedNetwork, TrainedWeights, weights_dtype
from dance.models.model_layout import DiffusersLayout, load_pretrained
from dance_wan.experts import (
    TRAINED_EXPERTS,
    all_references,
    expert_directory,
    expert_of_sigmas,
)
from dance_wan.layout import WanCheckpoint, resolve_checkpoint
from dance_wan.prompting import DEFAULT_NEGATIVE_PROMPT, clean_prompt

# The flow-matching scheduler's timesteps are sigma * num_train_timesteps (1000).
TIMESTEP_SCALE = 1000.0


@dataclass
class WanCommonConfig(DiffusersPolicyConfig):
    """Options every Wan policy has."""

    size_multiple: ClassVar[int] = 16
    size_reason: ClassVar[str] = "VAE factor 8 x patch 2; 32 for TI2V-5B"

    # The pipelines' defaults (480 x 832, 81 frames); the bundled recipes set their own.
    height: int = override("height", 480, " (Wan: a multiple of 16; 32 for TI2V-5B)")
    width: int = override("width", 832, " (Wan: a multiple of 16; 32 for TI2V-5B)")
    num_frames: int = option(
        81, "Frames per video, 4k+1 (the VAE keeps the first and compresses the rest 4x).", ge=1
    )
    max_sequence_length: int = option(
        512,
        "UMT5 prompt length in tokens (the pipeline's 512): prompts are padded and cut to it.",
        ge=1,
    )
    cfg_scale: float = option(
        5.0,
        "True classifier-free guidance scale against the negative prompt (the pipeline's"
        " guidance_scale 5.0); 1 = no unconditional pass.",
        ge=1.0,
    )
    cfg_scale_2: float = option(
        0.0,
        "Guidance scale of Wan2.2 A14B's low-noise expert (the pipeline's guidance_scale_2);"
        " 0 = cfg_scale.",
        ge=0.0,
    )
    negative_prompt: str = option(
        DEFAULT_NEGATIVE_PROMPT,
        "Prompt of the unconditional branch of the guidance (Wan's own negative prompt from its"
        " generation scripts; '' for the diffusers pipeline's default).",
    )
    experts: str = option(
        "both",
        "Wan2.2 A14B: which experts get LoRA (or train in full): 'both' (each trained step trains"
        " the expert that serves its noise level), 'high' (transformer) or 'low'"
        " (transformer_2); the other stays frozen. Ignored by one-transformer checkpoints.",
        choices=("both", "high", "low"),
    )
    lora_rank: int = override("lora_rank", 64, " (Flow-Factory's Wan examples: 64)")
    lora_alpha: float = override("lora_alpha", 128.0, " (Flow-Factory's Wan examples: 128)")
    gradient_checkpointing: bool = override("gradient_checkpointing", True)
    offload_frozen: bool = override(
        "offload_frozen", True, " Wan: UMT5-XXL alone is 11 GiB in bf16."
    )
    vae_tiling: bool = option(
        True,
        "Decode (and encode) with the VAE's spatial tiles (256 px), as the pipeline's"
        " enable_tiling; videos are always decoded one at a time (VAE slicing).",
    )

    def check(self) -> None:
        super().check()
        check_video_frames(self.num_frames)


class WanFamilyPolicy(DiffusersPolicy):
    """A Wan video policy: UMT5 prompt encoder, one or two flow-matching video transformers over
    ``[B, z, F, h, w]`` latents, the Wan VAE. Predicts the flow velocity.

    Subclasses give the layout they load, what a prompt carries (:meth:`_encode_extra`) and the
    transformer input built from the latents (:meth:`_model_input`)."""

    modality = "video"
    prediction_type = "flow"
    # Sharding and gradient checkpointing unit of WanTransformer3DModel.
    block_classes = imported_classes(
        "diffusers.models.transformers.transformer_wan", "WanTransformerBlock"
    )
    layout: ClassVar[DiffusersLayout]
    pipeline_name: ClassVar[str]

    checkpoint_kind = "a diffusers Wan directory"
    checkpoint_example = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    checkpoint: WanCheckpoint

    def resolve_checkpoint(self, config: WanCommonConfig) -> Path:
        self.checkpoint = resolve_checkpoint(config.model, self.layout)
        self.path = self.checkpoint.path
        self._check_checkpoint()
        return self.path

    def _load_components(self) -> None:
        self._load_frozen_components()
        self._load_experts()
        self._set_latent_geometry()

    def _check_checkpoint(self) -> None:
        """Raise ModelLayoutError if the checkpoint is not the kind this policy runs."""

    # --- loading -------------------------------------------------------------------------------

    def _load_frozen_components(self) -> None:
        """Tokenizer, UMT5 text encoder and VAE (frozen, in the runtime's frozen dtype)."""
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.tokenizer = self.load_tokenizer(AutoTokenizer, "tokenizer")
        self.text_encoder = self.load_frozen(UMT5EncoderModel, "text_encoder")
        self.vae = self.load_frozen(AutoencoderKLWan, "vae")
        if self.config.vae_tiling:
            self.vae.enable_tiling()

    def _load_experts(self) -> None:
        """The transformer (and A14B's transformer_2): trained ones get LoRA or train in full
        (:class:`TrainedWeights`), an untrained expert is loaded frozen."""
        from diffusers import WanTransformer3DModel

        cfg, runtime = self.config, self.runtime
        experts = self.checkpoint.experts
        wanted = experts if len(experts) == 1 else TRAINED_EXPERTS[cfg.experts]
        self._trained: dict[str, TrainedWeights] = {}
        self._experts: list[torch.nn.Module] = []
        for expert in experts:
            trains = expert in wanted
            dtype = weights_dtype(cfg.finetune, runtime) if trains else runtime.frozen_dtype
            network = load_pretrained(WanTransformer3DModel, self.path / expert, torch_dtype=dtype)
            if trains:
                target = TrainedNetwork(
                    component="transformer",
                    pipeline=self.pipeline_name,
                    model="Wan",
                    label=expert,
                    folder="transformer",
                )
                weights = TrainedWeights(network, target, cfg, runtime, self.name)
                self._trained[expert] = weights
                network = weights.network
                if cfg.gradient_checkpointing:
                    network.enable_gradient_checkpointing()
            else:
                network = network.requires_grad_(False).eval().to(runtime.device)
            setattr(self, expert, network)  # self.transformer, self.transformer_2
            self._experts.append(network)
        # FinetunedPolicy's single-network view: the first trained expert.
        self.trained = next(iter(self._trained.values()))

    def _set_latent_geometry(self) -> None:
        """Latent shape as the pipeline's prepare_latents computes it."""
        vae = self.vae
        spatial = vae.config.scale_factor_spatial
        temporal = vae.config.scale_factor_temporal
        self.patch_size = tuple(self._experts[0].config.patch_size)  # (t, h, w)
        self.check_size_factor(
            spatial * self.patch_size[1], f"VAE factor {spatial} x patch {self.patch_size[1]}"
        )
        self.latent_channels = vae.config.z_dim
        for expert, network in zip(self.checkpoint.experts, self._experts, strict=True):
            if network.config.out_channels != self.latent_channels:
                raise ModelLayoutError(
                    f"the {expert} in {self.path} predicts {network.config.out_channels} channels"
                    f" but the VAE has {self.latent_channels} latent channels"
                )
        self.temporal_factor = temporal
        self.set_video_latent_shape(self.latent_channels, temporal, spatial)
        stats = (vae.config.latents_mean, vae.config.latents_std)
        # [1, z, 1, 1, 1] each, fp32: latents = (vae latents - mean) / std.
        self.latents_mean, self.latents_std = (
            torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1, 1) for s in stats
        )

    # --- prompt encoding -----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        if self.config.cfg_scale != 1.0 or self.config.cfg_scale_2 not in (0.0, 1.0):
            self.negative_conditioning()  # encoded here, with the prompts, not inside predict
        return super().encode(prompts)

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor]:
        """WanPipeline._get_t5_prompt_embeds: ``[N, max_sequence_length, D]``, the last hidden
        state, zero past each prompt."""
        length = self.config.max_sequence_length
        tokens = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.runtime.device
        with self._offload.on_device(self.text_encoder):
            mask = tokens.attention_mask.to(device)
            states = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        # The pipeline keeps the first sum(mask) states and pads with zeros.
        keep = torch.arange(length, device=device)[None] < mask.sum(dim=1, keepdim=True)
        return (states * keep[..., None].to(states.dtype),)

    def negative_embeds(self) -> torch.Tensor:
        """The negative prompt's UMT5 states ``[1, L, D]``, encoded once and kept."""
        return self.negative_conditioning()["prompt_embeds"]

    # --- noise, prediction, decoding -----------------------------------------------------------

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow velocity ``[B, z, F, h, w]`` (fp32) at sigma ``timesteps [B]``; each sample runs
        on the expert that serves its sigma (A14B), with that expert's guidance scale."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latents of shape {tuple(latents.shape)} do not match policy.num_frames x height x"
                f" width = {self.config.num_frames}x{self.config.height}x{self.config.width}, whose"
                f" latents are [B, {', '.join(map(str, self.latent_shape))}]"
            )
        device = self.runtime.device
        latents = latents.to(device)
        sigmas = timesteps.to(device, torch.float32).expand(latents.shape[0])  # [B]
        experts = expert_of_sigmas(sigmas, self.checkpoint.boundary_ratio)  # [B]
        # Under FSDP every rank must call the same sharded modules: with several trained experts
        # and several ranks, every call runs each trained expert (see _touch_expert).
        in_step = self.runtime.world_size > 1 and len(self._trained) > 1
        if not in_step and bool((experts == experts[0]).all()):
            return self._predict_on(int(experts[0]), latents, sigmas, cond)
        out = latents.new_zeros(latents.shape, dtype=torch.float32)
        for index, expert in enumerate(self.checkpoint.experts):
            rows = (experts == index).nonzero().squeeze(1)
            if rows.numel():
                part = self._predict_on(index, latents[rows], sigmas[rows], cond.select(rows))
                out = out.index_copy(0, rows, part)
            elif in_step and expert in self._trained:
                out = out + self._touch_expert(index, latents, sigmas, cond)
        return out

    def _touch_expert(
        self, index: int, latents: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """0 (a scalar), computed by expert ``index`` on the first sample: the expert's forward
        and backward run, so its FSDP collectives stay in step with ranks whose batch has steps
        of that expert, while the result and the gradients are unchanged."""
        first = torch.zeros(1, dtype=torch.long, device=latents.device)
        part = self._predict_on(index, latents[:1], sigmas[:1], cond.select(first))
        return 0.0 * part.sum()

    def _predict_on(
        self, index: int, latents: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The guided velocity of expert ``index`` for every sample of the batch."""
        model, dtype, autocast = self._expert_network(index)
        scale = self.config.cfg_scale
        if index == 1 and self.config.cfg_scale_2:
            scale = self.config.cfg_scale_2
        hidden = self._model_input(latents, cond)  # [B, C_in, F, h, w]
        timestep = self._timestep_input(sigmas, cond) * TIMESTEP_SCALE  # [B] or [B, tokens]
        with autocast:
            out = self._guided_forward(model, dtype, hidden, timestep, cond, scale)
        return self._model_output(out, latents, sigmas, cond)

    def _expert_network(self, index: int) -> tuple[torch.nn.Module, torch.dtype, Any]:
        """The module to call for expert ``index``, the dtype of its inputs and its autocast."""
        expert = self.checkpoint.experts[index]
        weights = self._trained.get(expert)
        if weights is not None:
            model, dtype = weights.forward_network()  # the reference inside reference()
            return model, dtype, weights.autocast_context()
        # A frozen expert: its own weights' dtype, under the trained expert's autocast.
        network = self._experts[index]
        autocast = self.trained.autocast_context()
        dtype = self.trained.compute_dtype if self.trained.autocast else network.dtype
        return network, dtype, autocast

    def _model_input(self, latents: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The transformer's hidden_states input (text-to-video: the latents themselves)."""
        return latents

    def _timestep_input(self, sigmas: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Sigmas ``[B]``, or with ``expand_timesteps`` (TI2V-5B) one per latent token
        ``[B, F * h/p * w/p]`` as the pipeline builds them."""
        if not self.checkpoint.expand_timesteps:
            return sigmas
        mask = self._token_mask(sigmas.device)  # [F, h/p, w/p]
        return sigmas[:, None] * mask.flatten()[None]

    def _token_mask(self, device: torch.device) -> torch.Tensor:
        """Per-token timestep multiplier of TI2V-5B: 1 everywhere (text-to-video)."""
        _, ph, pw = self.patch_size
        shape = (self.latent_frames, self.latent_height // ph, self.latent_width // pw)
        return torch.ones(shape, device=device)

    def _model_output(
        self, out: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The velocity the sampler steps with (text-to-video: the guided model output)."""
        return out

    def _guided_forward(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        hidden: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        scale: float,
    ) -> torch.Tensor:
        """``uncond + scale * (cond - uncond)`` with the negative prompt, both branches in one
        batched call; one call without guidance at scale 1."""
        embeds = cond["prompt_embeds"].to(hidden.device)
        image = cond.get("image_embeds")
        extra = [] if image is None else [image]

        def forward(hidden: torch.Tensor, timestep: torch.Tensor, *text: torch.Tensor) -> Any:
            return self._transformer(model, dtype, hidden, timestep, *text)

        negative = self.negative_inputs(["prompt_embeds"], [embeds]) if scale != 1.0 else []
        # The pipeline runs the conditional branch, then the unconditional one.
        return guided_forward(
            forward,
            [hidden, timestep, embeds, *extra],
            [hidden, timestep, *negative, *extra],
            scale,
            uncond_first=False,
        )

    def _transformer(
        self,
        model: torch.nn.Module,
        dtype: torch.dtype,
        hidden: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One transformer call as the pipeline makes it (inputs in the transformer's dtype, the
        fp32 timestep); fp32 output."""
        device = self.runtime.device
        out = model(
            hidden_states=hidden.to(dtype),
            timestep=timestep,
            encoder_hidden_states=prompt_embeds.to(device, dtype),
            encoder_hidden_states_image=None
            if image_embeds is None
            else image_embeds.to(device, dtype),
            return_dict=False,
        )[0]
        return out.float()

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Policy latents -> the VAE's own latents (undo the per-channel normalisation)."""
        mean = self.latents_mean.to(latents.device, latents.dtype)
        std = self.latents_std.to(latents.device, latents.dtype)
        return latents * std + mean

    def normalised_latents(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latents -> policy latents, as the I2V pipeline's prepare_latents."""
        mean = self.latents_mean.to(vae_latents.device, vae_latents.dtype)
        std = self.latents_std.to(vae_latents.device, vae_latents.dtype)
        return (vae_latents - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [0, 1] (fp32), as the pipeline's output stage: undo the
        normalisation, decode (spatial tiles with vae_tiling), map [-1, 1] to [0, 1]. One video
        at a time, which bounds the decoder's activation memory (VAE slicing)."""
        vae = self.vae
        videos = []
        with self._offload.on_device(vae):
            for row in latents:
                z = self.vae_latents(row[None].to(self.runtime.device, torch.float32))
                videos.append(vae.decode(z.to(vae.dtype), return_dict=False)[0].float())
        return (torch.cat(videos) / 2 + 0.5).clamp(0, 1)

    # --- the trained expert(s) -----------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for weights in self._trained.values() for p in weights.trainable]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [weights.network for weights in self._trained.values()]

    def train(self, mode: bool = True) -> None:
        for weights in self._trained.values():
            weights.network.train(mode)

    def prepare_reference(self) -> None:
        for weights in self._trained.values():
            weights.prepare_reference()

    def reference(self):  # noqa: ANN201 - a context manager
        """Inside, every trained expert computes as its frozen reference."""
        return all_references([weights.reference() for weights in self._trained.values()])

    def save_trained(self, directory: str) -> None:
        """Each trained expert's weights (see :mod:`dance_wan.experts` for where)."""
        for expert, weights in self._trained.items():
            weights.save(expert_directory(directory, expert))

    def load_trained(self, directory: str) -> None:
        for expert, weights in self._trained.items():
            weights.load(expert_directory(directory, expert))
