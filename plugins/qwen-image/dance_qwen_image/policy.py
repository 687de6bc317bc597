"""The Qwen-Image policy: a rectified-flow MMDiT over packed 2x2 latent patches, conditioned on
the Qwen2.5-VL text encoder, predicting the velocity.

Prompt encoding, noise, the transformer call, true classifier-free guidance and decoding follow
diffusers' ``QwenImagePipeline`` (pipelines/qwenimage/pipeline_qwenimage.py), so that the policy
and the pipeline given the same inputs compute the same tensors, and trained LoRA weights load back
with the pipeline's ``load_lora_weights``:

- the prompt is wrapped in Qwen-Image's chat template; the encoder's last hidden state is taken
  at the prompt's tokens only, without the template's 34-token system part, padded with zeros and
  masked to the batch's longest prompt;
- the latents are 2x2 patch tokens ``[B, (h/2)*(w/2), 4C]`` of a 16-channel latent, the
  transformer reads ``timestep = sigma`` (the pipeline divides its scheduler's sigma x 1000 by
  1000) and the patch grid ``img_shapes``;
- true CFG runs the conditional and the negative prompt's branch and rescales the guided velocity
  of every token to the conditional velocity's norm;
- the VAE works on a frame axis ``[B, C, 1, h, w]`` and its latents are normalised per channel
  by ``latents_mean`` and ``latents_std``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dance.config import option
from dance.diffusers_policy import DiffusersPolicy, DiffusersPolicyConfig, override
from dance.diffusers_policy.config import JOINT_ATTENTION_LORA_TARGETS
from dance.diffusers_policy.guidance import cfg_combine
from dance.diffusers_policy.packing import pack_latents, unpack_latents
from dance.interfaces import Conditioning, imported_classes
from dance.models.finetune import TrainedNetwork
from dance_qwen_image import layout

logger = logging.getLogger(__name__)

# QwenImagePipeline.prompt_template_encode and prompt_template_encode_start_idx: the system part
# of the template is 34 tokens long with Qwen's tokenizer; the pipeline drops those embeddings.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity,"
    " text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_DROP = 34
# QwenImagePipeline.tokenizer_max_length: prompts are cut at 1024 tokens after the template.
TOKENIZER_MAX_LENGTH = 1024


@dataclass
class QwenImageConfig(DiffusersPolicyConfig):
    """Options of the Qwen-Image policy; the defaults are QwenImagePipeline's where DanceGRPO
    (scripts/finetune/finetune_qwenimage_grpo.sh) does not set them."""

    size_multiple = 16
    size_reason = "VAE factor 8 x 2x2 latent packing"

    height: int = override("height", 720, " DanceGRPO's Qwen-Image: 720.")
    width: int = override("width", 720, " DanceGRPO's Qwen-Image: 720.")
    lora_targets: list[str] = override(
        "lora_targets",
        list(JOINT_ATTENTION_LORA_TARGETS),
        " Here the joint attention's image and text projections.",
    )
    true_cfg_scale: float = option(
        4.0,
        "True classifier-free guidance scale s against the negative prompt, in rollouts and"
        " training alike: v = v_n + s * (v_c - v_n), rescaled per token to the norm of v_c as"
        " QwenImagePipeline does (its default: 4.0; DanceGRPO trains without guidance: 1); 1 or"
        " less is one conditional pass.",
        ge=0.0,
    )
    negative_prompt: str = option(
        " ",
        "Prompt of the negative branch of true CFG (Qwen-Image's examples use ' ').",
    )
    max_sequence_length: int = option(
        512,
        "Most prompt tokens (after the template's system part) the transformer reads; longer"
        " prompts are cut (QwenImagePipeline's default: 512; at most 1024).",
        ge=1,
        le=TOKENIZER_MAX_LENGTH,
    )


class QwenImagePolicy(DiffusersPolicy):
    """Qwen-Image text-to-image: the Qwen2.5-VL encoder, a 60-block MMDiT over 2x2 patches of
    16-channel latents predicting the flow velocity, and Qwen-Image's (Wan-style) VAE."""

    name = "qwen-image"
    config_class = QwenImageConfig
    config: QwenImageConfig
    modality = "image"
    prediction_type = "flow"
    block_classes = imported_classes(
        "diffusers.models.transformers.transformer_qwenimage", "QwenImageTransformerBlock"
    )
    checkpoint_kind = "a diffusers Qwen-Image directory"
    checkpoint_example = "Qwen/Qwen-Image"
    resolve_model = staticmethod(layout.resolve_model)
    text_keys = ("prompt_embeds", "prompt_embeds_mask")
    # LoRA saves through QwenImagePipeline.save_lora_weights (its load_lora_weights reads it
    # back); a full fine-tune is transformer/, a QwenImageTransformer2DModel.
    trained_network = TrainedNetwork(
        component="transformer", pipeline="QwenImagePipeline", model="Qwen-Image"
    )

    # The negative prompt's embeddings are encoded on the first guided call and kept.

    def _load_components(self) -> None:
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

        self.tokenizer = self.load_tokenizer(Qwen2Tokenizer, "tokenizer")
        self.text_encoder = self.load_frozen(Qwen2_5_VLForConditionalGeneration, "text_encoder")
        self.vae = self.load_frozen(AutoencoderKLQwenImage, "vae")
        # QwenImagePipeline.__init__: 2 ** len(temperal_downsample), 8 for Qwen-Image's VAE.
        self.vae_scale_factor = 2 ** len(self.vae.config.temperal_downsample)
        self.transformer = self.load_network(QwenImageTransformer2DModel, self.path / "transformer")
        factor = self.vae_scale_factor * 2
        self.check_size_factor(factor, f"VAE factor {self.vae_scale_factor} x 2x2 packing")
        cfg = self.config
        # QwenImagePipeline.prepare_latents: a [C, h, w] latent packed into (h/2)*(w/2) tokens.
        self.latent_channels = self.transformer.config.in_channels // 4
        self.latent_height = cfg.height // self.vae_scale_factor
        self.latent_width = cfg.width // self.vae_scale_factor
        tokens = (self.latent_height // 2) * (self.latent_width // 2)
        self.latent_shape = (tokens, self.latent_channels * 4)

    def lora_exclude(self, network: torch.nn.Module) -> list[str]:
        """The text-stream query and output projections of the last block: the transformer reads
        only the image stream after it, so adapters there would get no gradient."""
        blocks = [n for n, m in network.named_modules() if isinstance(m, self.block_classes)]
        if not blocks:
            return []
        dead = [f"{blocks[-1]}.attn.add_q_proj", f"{blocks[-1]}.attn.to_add_out"]
        return self.lora_targeted(dead)

    # --- prompts -------------------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """QwenImagePipeline._get_qwen_prompt_embeds and encode_prompt: the encoder's last
        hidden state at each prompt's own tokens (the template's system part dropped), cut at
        max_sequence_length, zero-padded ([N, L, D], L = max_sequence_length so that cached rows
        stack, and a prompt's row is the same alone or in a batch) with the mask of the real
        tokens ([N, L], int64). :meth:`predict` cuts both to the batch's longest prompt, the
        length the pipeline pads to."""
        length = self.config.max_sequence_length
        tokens = self.tokenizer(
            [PROMPT_TEMPLATE.format(t) for t in texts],
            max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP,
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(self.runtime.device)
        encoder = self.text_encoder
        with self._offload.on_device(encoder):
            hidden = encoder(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask,
                output_hidden_states=True,
            ).hidden_states[-1]  # [N, T, D]
        valid = tokens.attention_mask.bool()
        embeds = hidden.new_zeros(len(texts), length, hidden.shape[-1])
        mask = torch.zeros(len(texts), length, dtype=torch.long, device=hidden.device)
        longest = 0
        for i in range(len(texts)):
            own = hidden[i][valid[i]][TEMPLATE_DROP:]  # [T_i, D]: the prompt's tokens
            longest = max(longest, own.shape[0])
            n = min(own.shape[0], length)
            embeds[i, :n] = own[:n]
            mask[i, :n] = 1
        if longest > length:
            logger.warning(
                "Qwen-Image truncates prompts to policy.max_sequence_length = %d tokens; the"
                " longest here has %d",
                length,
                longest,
            )
        return embeds.to(encoder.dtype), mask

    # --- noise, prediction, decoding -----------------------------------------------------------

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Packed fp32 noise [B, S, 4C], drawn as QwenImagePipeline.prepare_latents draws it
        ([B, 1, C, h, w] randn, then packed): the same generator gives the pipeline's noise."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch_size, 1, self.latent_channels, self.latent_height, self.latent_width)
        noise = randn_tensor(shape, generator=generator, device=self.runtime.device)
        return pack_latents(noise[:, 0].float())

    def _img_shapes(self, batch: int) -> list[list[tuple[int, int, int]]]:
        """The patch grid (frames, rows, cols) of every sample, as the pipeline passes it."""
        return [[(1, self.latent_height // 2, self.latent_width // 2)]] * batch

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow velocity [B, S, 4C] (fp32) at sigma ``timesteps [B]``, called as QwenImagePipeline
        calls its transformer (timestep = sigma); with true_cfg_scale > 1 the conditional and the
        negative branch, combined and rescaled per token as the pipeline does."""
        self.check_latents(latents)
        model, dtype = self.trained.forward_network()  # the reference inside reference()
        device = self.runtime.device
        x = latents.to(device, dtype)
        t = timesteps.to(device, torch.float32).expand(latents.shape[0])
        img_shapes = self._img_shapes(latents.shape[0])

        def transformer(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            # The pipeline pads a batch to its longest prompt and drops an all-ones mask.
            used = int(mask.sum(dim=1).max())
            embeds, mask = embeds[:, :used], mask[:, :used]
            with self.trained.autocast_context():
                out = model(
                    hidden_states=x,
                    timestep=t,
                    encoder_hidden_states=embeds.to(device, dtype),
                    encoder_hidden_states_mask=None if bool(mask.all()) else mask.to(device),
                    img_shapes=img_shapes,
                    return_dict=False,
                )[0]
            return out.float()

        text = [cond[k] for k in self.text_keys]
        v_cond = transformer(*text)
        scale = self.config.true_cfg_scale
        if scale <= 1.0:
            return v_cond
        v_neg = transformer(*self.negative_inputs(self.text_keys, text))
        guided = cfg_combine(v_neg, v_cond, scale)
        # QwenImagePipeline: every token's guided velocity takes the conditional one's norm.
        norm_cond = torch.norm(v_cond, dim=-1, keepdim=True)
        return guided * (norm_cond / torch.norm(guided, dim=-1, keepdim=True))

    def _vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, S, 4C] -> [B, C, 1, h, w]: QwenImagePipeline._unpack_latents (one frame)."""
        return unpack_latents(latents, self.latent_height, self.latent_width).unsqueeze(2)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [0, 1] (fp32), as the pipeline's output stage: undo the
        per-channel normalisation (z * std + mean, in the VAE's dtype), decode the one frame,
        map [-1, 1] to [0, 1]."""
        vae = self.vae
        channels = vae.config.z_dim
        images = []
        with self._offload.on_device(vae):
            device = self.runtime.device
            mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1)
            mean, inv_std = mean.to(device, vae.dtype), inv_std.to(device, vae.dtype)
            z = self._vae_latents(latents).to(device, vae.dtype)
            for chunk in z.split(self._decode_chunk(z.shape[0])):
                frames = vae.decode(chunk / inv_std + mean, return_dict=False)[0]
                images.append(frames[:, :, 0].float())  # [b, 3, H, W]
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)
