"""The base class of diffusers policies: what FLUX, Stable Diffusion, HunyuanVideo and their
successors do alike.

A subclass sets the class attributes that name its model (``checkpoint_kind``,
``checkpoint_example``, ``trained_network``, ``block_classes``...) and implements:

- ``resolve_model``: its layout module's function that finds and checks a checkpoint;
- :meth:`DiffusersPolicy._load_components`: tokenizers, frozen encoders and VAE (with
  :meth:`load_frozen`), the trained network (with :meth:`load_network`) and ``latent_shape``;
- :meth:`DiffusersPolicy._encode_texts`: the encoder outputs named by ``text_keys`` for a list of
  texts, as the model's pipeline computes them;
- ``predict``: the network call, with the guidance helpers of :mod:`.guidance`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from dance.config import validate
from dance.diffusers_policy.cache import EmbeddingCache
from dance.diffusers_policy.config import DiffusersPolicyConfig
from dance.errors import ConfigError, UsageError
from dance.interfaces import Conditioning, Prompt, Runtime
from dance.models.finetune import FinetunedPolicy
from dance.models.model_layout import check_component_files, load_pretrained, transformers_dtype
from dance.models.model_layout import load_tokenizer as load_checked_tokenizer
from dance.models.offload import FrozenOffload

logger = logging.getLogger(__name__)


def vae_scale_factor(vae: Any) -> int:
    """2 ** (number of VAE blocks - 1): 8 for the SD and FLUX VAEs (their pipelines' __init__)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def warn_truncated(tokenizer: Any, texts: Sequence[str], limit: int, label: str) -> None:
    """As diffusers pipelines do: say so when a prompt is cut at ``limit`` tokens (CLIP at 77
    tokens is common and harmless)."""
    longest = max(len(ids) for ids in tokenizer(list(texts), verbose=False).input_ids)
    if longest > limit:
        logger.warning(
            "%s truncates prompts to %d tokens; the longest here has %d", label, limit, longest
        )


class DiffusersPolicy(FinetunedPolicy):
    """A policy on a diffusers pipeline: frozen text encoders and VAE, one trained network."""

    config: DiffusersPolicyConfig
    # The network's repeated blocks: the units FSDP shards and gradient checkpointing recomputes.
    block_classes: ClassVar[tuple[type[torch.nn.Module], ...]] = ()
    # "needs a model" help: what policy.model must be ("a diffusers FLUX directory") and an
    # example repo id ("black-forest-labs/FLUX.1-dev").
    checkpoint_kind: ClassVar[str]
    checkpoint_example: ClassVar[str]
    # Whether prompts carry a conditioning image (image-to-video, editing); what to say to a user
    # who gives an image to a text-only policy.
    takes_image: ClassVar[bool] = False
    image_hint: ClassVar[str] = ""
    # The task of an image policy, for messages ("image-to-video", "image editing").
    image_task: ClassVar[str] = "image-to-video"
    # Names of what _encode_texts returns, in order: the conditioning keys of the text.
    text_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds",)

    # The plugin's layout check: the checked directory of a local path or cached repo id
    # (a staticmethod).
    resolve_model: ClassVar[Callable[[str], Path]]

    # Latent shape of one sample as the network reads it, [*L] (set by _load_components).
    latent_shape: tuple[int, ...]

    def __init__(self, config: DiffusersPolicyConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.model:
            raise UsageError(
                f"policy '{self.name}' needs a model: pass --model PATH_OR_REPO_ID or set"
                f" policy.model to {self.checkpoint_kind} or a cached repo id"
                f" ({self.checkpoint_example})"
            )
        validate(config, prefix="policy.")
        self.path = self.resolve_checkpoint(config)
        # Frozen parts live in CPU memory between uses when offloading (CUDA only).
        self._offload = FrozenOffload(config.offload_frozen, runtime.device)
        self._prompt_cache = EmbeddingCache(config.prompt_cache_size, config.cache_prompts)
        self._negative: dict[str, torch.Tensor] | None = None
        self._load_components()

    def resolve_checkpoint(self, config: Any) -> Path:
        """The checked checkpoint directory of ``config.model``."""
        return type(self).resolve_model(config.model)

    @abstractmethod
    def _load_components(self) -> None:
        """Load tokenizers, frozen parts and the trained network; set ``latent_shape``."""

    # --- loading -------------------------------------------------------------------------------

    def load_frozen(self, model_class: Any, folder: str | Path) -> Any:
        """A frozen part (text encoder, VAE) from ``self.path / folder``, in the runtime's frozen
        dtype, in eval mode without gradients, where offloading keeps it."""
        kwargs: dict[str, Any]
        if model_class.__module__.startswith("transformers"):
            kwargs = transformers_dtype(self.runtime.frozen_dtype)
        else:
            kwargs = {"torch_dtype": self.runtime.frozen_dtype}
        # Checked loading: a damaged, incomplete or non-finite file is one line naming it.
        module = load_pretrained(model_class, self.path / folder, **kwargs)
        return module.requires_grad_(False).eval().to(self._offload.home)

    def load_tokenizer(self, tokenizer_class: Any, folder: str | Path) -> Any:
        """A tokenizer from ``self.path / folder``; an empty or incomplete folder is an error, not
        a default tokenizer that maps every word to <unk>."""
        return load_checked_tokenizer(tokenizer_class, self.path / folder)

    def load_processor(self, processor_class: Any, folder: str | Path) -> Any:
        """An image processor (a JSON config, no vocabulary) from ``self.path / folder``; a
        damaged config file is one line naming it."""
        path = self.path / folder
        check_component_files(path)
        return processor_class.from_pretrained(path, local_files_only=True)

    def load_network(self, model_class: Any, folder: str | Path) -> Any:
        """The trained network (see FinetunedPolicy.load_network), with diffusers' gradient
        checkpointing of its blocks when policy.gradient_checkpointing is on."""
        network = super().load_network(model_class, folder)
        if self.config.gradient_checkpointing:
            network.enable_gradient_checkpointing()
        return network

    def lora_targeted(self, names: Sequence[str]) -> list[str]:
        """Those of the module ``names`` that LoRA would wrap (peft matches a target as a name
        suffix): what :meth:`lora_exclude` may name."""
        targets = self.config.lora_targets
        return [n for n in names if any(n == t or n.endswith(f".{t}") for t in targets)]

    def check_size_factor(self, factor: int, why: str) -> None:
        """ConfigError unless height and width are multiples of ``factor`` (known only once the
        checkpoint's configs are read)."""
        cfg = self.config
        if cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"policy.height and policy.width must be multiples of {factor} ({why}) for"
                f" {self.path}, got {cfg.height}x{cfg.width}"
            )

    # --- prompts -------------------------------------------------------------------------------

    def _check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """UsageError for an image given to a text-only policy, and for a prompt of an image
        policy (``takes_image``) without an image or with one of another shape than [C, H, W]."""
        if not self.takes_image:
            if any(p.image is not None for p in prompts):
                raise UsageError(
                    f"policy '{self.name}' is text-to-{self.modality}: prompts must not carry an"
                    f" image{self.image_hint}"
                )
            return
        for p in prompts:
            if p.image is None:
                raise UsageError(
                    f"policy '{self.name}' is {self.image_task}: prompt {p.text!r} has no image;"
                    ' use a JSONL prompt file with {"prompt": "...", "image": "path"} per line'
                )
            if p.image.ndim != 3 or p.image.shape[0] not in (1, 3):
                raise UsageError(
                    f"the image of prompt {p.text!r} has shape {tuple(p.image.shape)}; expected"
                    " [3, H, W] (or [1, H, W]) pixels in [0, 1]"
                )

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        """The text embeddings (``text_keys``) of every prompt, each distinct text encoded once
        and cached, plus what :meth:`_encode_extra` adds (image latents...)."""
        self._check_prompts(prompts)
        texts = [p.text for p in prompts]
        columns = self._prompt_cache.lookup(texts, self._encode_texts)
        return Conditioning(
            zip(self.text_keys, columns, strict=True), **self._encode_extra(prompts)
        )

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """The text encoders' outputs for ``texts``, one ``[N, ...]`` tensor per ``text_keys``."""

    def _encode_extra(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Conditioning beyond the text (image latents for image-to-video); none by default."""
        return {}

    def negative_prompt(self) -> str:
        """The prompt of true CFG's unconditional branch: policy.negative_prompt where the policy
        has that option, else the empty prompt (what the pipelines encode for none)."""
        return getattr(self.config, "negative_prompt", "")

    def negative_conditioning(self) -> dict[str, torch.Tensor]:
        """The negative prompt's embeddings (``[1, ...]`` each, ``text_keys``), encoded once and
        kept apart from the prompt cache."""
        if self._negative is None:
            with torch.no_grad():
                outputs = self._encode_texts([self.negative_prompt()])
            self._negative = dict(zip(self.text_keys, outputs, strict=True))
        return self._negative

    def negative_inputs(
        self, keys: Sequence[str], like: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The negative embeddings ``keys``, expanded to the batch of and cast like ``like``
        (the conditional inputs of the same keys)."""
        negative = self.negative_conditioning()
        return [
            negative[k].expand(t.shape[0], *t.shape[1:]).to(t.device, t.dtype)
            for k, t in zip(keys, like, strict=True)
        ]

    def set_video_latent_shape(self, channels: int, temporal: int, spatial: int) -> None:
        """``latent_frames``, ``latent_height``, ``latent_width`` and ``latent_shape``
        ``[C, F, h, w]`` of the configured video size, for a VAE that compresses time by
        ``temporal`` (its first frame alone: 4k+1 frames give k+1 latent frames) and space by
        ``spatial``."""
        cfg = self.config
        self.latent_frames = (cfg.num_frames - 1) // temporal + 1
        self.latent_height = cfg.height // spatial
        self.latent_width = cfg.width // spatial
        self.latent_shape = (channels, self.latent_frames, self.latent_height, self.latent_width)

    def check_latents(self, latents: torch.Tensor) -> None:
        """ValueError unless ``latents`` are [B, *latent_shape] (the configured size's)."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            cfg = self.config
            size = f"{cfg.height}x{cfg.width}"
            frames = getattr(cfg, "num_frames", None)
            size = f"{size}, {frames} frames" if frames else size
            raise ValueError(
                f"latents of shape {tuple(latents.shape)} do not match policy.height x width ="
                f" {size}, whose latents are [B, {', '.join(map(str, self.latent_shape))}]"
            )

    # --- noise and decoding --------------------------------------------------------------------

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal fp32 latents [B, *latent_shape], drawn as the pipelines'
        prepare_latents draw them: the same generator gives the pipeline's noise."""
        from diffusers.utils.torch_utils import randn_tensor

        # randn_tensor draws on the generator's device (a CPU generator stays reproducible on GPU).
        return randn_tensor(
            (batch_size, *self.latent_shape),
            generator=generator,
            device=self.runtime.device,
            dtype=torch.float32,
        )

    def _vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latent layout of the policy's latents (FLUX unpacks its tokens here)."""
        return latents

    def _decode_chunk(self, batch: int) -> int:
        """Samples per VAE decode call (all by default; large decoders take fewer)."""
        return batch

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (fp32), as the pipelines' output stage: undo the VAE normalisation
        (z / scaling_factor + shift_factor, computed in fp32), decode, map [-1, 1] to [0, 1]."""
        vae = self.vae
        scale = vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = self._vae_latents(latents)
        images = []
        with self._offload.on_device(vae):
            for chunk in x.split(self._decode_chunk(x.shape[0])):
                z = chunk.to(torch.float32) / scale + shift
                z = z.to(self.runtime.device, vae.dtype)
                images.append(vae.decode(z, return_dict=False)[0].float())
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)
