"""The FLUX.1 policy: a rectified-flow text-to-image transformer (FLUX.1-dev, FLUX.1-schnell).

Prompt encoding, noise, latent packing, position ids and decoding follow diffusers'
``FluxPipeline`` (pipelines/flux/pipeline_flux.py) so that a policy and the pipeline given the same
inputs compute the same tensors, and trained weights load back into the pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dance.config import option, validate
from dance.errors import ConfigError, UsageError
from dance.interfaces import Conditioning, Policy, Prompt, Runtime
from dance_flux.layout import resolve_model

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what FluxPipeline.load_lora_weights reads
TRANSFORMER_DIR = "transformer"  # a full fine-tune, loadable as FluxTransformer2DModel
ADAPTER = "default"


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
    finetune: str = option(
        "lora",
        "What trains: LoRA adapters on the transformer ('lora') or the whole transformer ('full').",
        choices=("lora", "full"),
    )
    lora_rank: int = option(128, "LoRA rank r.", ge=1)
    lora_alpha: float = option(
        256.0, "LoRA alpha; the adapter output is scaled by alpha / r.", gt=0
    )
    lora_targets: list[str] = option(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "Transformer modules (name suffixes) that get LoRA adapters: attention q/k/v/out, as in "
        "DanceGRPO's FLUX recipe.",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute transformer blocks in the backward pass to save activation memory."
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
        if self.finetune == "lora" and not self.lora_targets:
            raise ConfigError("policy.lora_targets is empty: name the modules that get LoRA")


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


def _transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers 5 names the load dtype `dtype`; 4.x calls it `torch_dtype`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP2 shards); every rank must call this together."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class FluxPolicy(Policy):
    """FLUX.1 text-to-image: CLIP + T5 prompt encoders, a flow-matching transformer over packed
    2x2 latent patches, and a 16-channel VAE. Predicts the flow velocity."""

    name = "flux"
    config_class = FluxConfig
    modality = "image"
    prediction_type = "flow"

    def __init__(self, config: FluxConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.model:
            raise UsageError(
                "policy 'flux' needs a model: pass --model PATH_OR_REPO_ID or set policy.model to"
                " a diffusers FLUX directory or a cached repo id (black-forest-labs/FLUX.1-dev)"
            )
        validate(config, prefix="policy.")
        self.path = resolve_model(config.model)
        self._load_components()

        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._ids_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._reference_model: torch.nn.Module | None = None
        self._in_reference = False

    # --- loading -------------------------------------------------------------------------------

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizerFast, T5EncoderModel, T5TokenizerFast

        cfg, path = self.config, self.path
        device, frozen = self.runtime.device, self.runtime.frozen_dtype

        def freeze(module: torch.nn.Module) -> Any:
            return module.requires_grad_(False).eval().to(device)

        self.tokenizer = CLIPTokenizerFast.from_pretrained(
            path / "tokenizer", local_files_only=True
        )
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(
            path / "tokenizer_2", local_files_only=True
        )
        self.text_encoder = freeze(
            CLIPTextModel.from_pretrained(
                path / "text_encoder", local_files_only=True, **_transformers_dtype(frozen)
            )
        )
        self.text_encoder_2 = freeze(
            T5EncoderModel.from_pretrained(
                path / "text_encoder_2", local_files_only=True, **_transformers_dtype(frozen)
            )
        )
        self.vae = freeze(
            AutoencoderKL.from_pretrained(path / "vae", torch_dtype=frozen, local_files_only=True)
        )
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

        lora = cfg.finetune == "lora"
        # LoRA trains fp32 adapters over frozen base weights (frozen dtype); a full fine-tune
        # trains the fp32 weights themselves.
        transformer = FluxTransformer2DModel.from_pretrained(
            path / "transformer",
            torch_dtype=frozen if lora else torch.float32,
            local_files_only=True,
        )
        transformer.requires_grad_(False)
        if lora:
            self._add_lora(transformer)
        else:
            transformer.requires_grad_(True)
        self.transformer = transformer.to(device)
        self._trainable = [p for p in self.transformer.parameters() if p.requires_grad]
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
        # bf16 autocast on CUDA (as DanceGRPO); CPU runs in the weights' own dtype.
        self._autocast = device.type == "cuda"
        if self._autocast:
            self._compute_dtype = torch.bfloat16
        else:
            self._compute_dtype = frozen if lora else torch.float32

    def _add_lora(self, transformer: torch.nn.Module) -> None:
        from peft import LoraConfig

        cfg = self.config
        lora_config = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_targets),
            init_lora_weights="gaussian",
        )
        # A fixed seed, on CPU and apart from the global RNG: every rank of a run starts from the
        # same adapters (lora_B is zero, so the policy starts as the base model either way).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                transformer.add_adapter(lora_config, adapter_name=ADAPTER)
            except ValueError as exc:
                first_line = str(exc).strip().splitlines()[0]
                raise ConfigError(
                    f"policy.lora_targets {list(cfg.lora_targets)} match no FLUX transformer"
                    f" module ({first_line})"
                ) from None
        for name, param in transformer.named_parameters():
            is_lora = ".lora_A." in name or ".lora_B." in name
            if is_lora:
                param.data = param.data.to(torch.float32)
            param.requires_grad_(is_lora)

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
        pooled = self.text_encoder(clip_ids.to(device), output_hidden_states=False).pooler_output
        pooled = pooled.to(self.text_encoder.dtype)

        t5_len = self.config.max_sequence_length
        t5_ids = self.tokenizer_2(
            texts, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt"
        ).input_ids
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
        model, dtype = self.transformer, self._compute_dtype
        if self._in_reference and self.config.finetune == "full":
            model = self._reference_model
            if not self._autocast:  # the frozen copy computes in the frozen dtype
                dtype = self.runtime.frozen_dtype
        device = self.runtime.device
        batch, tokens, _ = latents.shape
        prompt_embeds = cond["prompt_embeds"].to(device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.config.guidance, device=device)
        with self._autocast_context():
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

    def _autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast:
            return torch.autocast(self.runtime.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
        image = self.vae.decode(x.to(self.runtime.device, self.vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._trainable)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.transformer]

    def train(self, mode: bool = True) -> None:
        self.transformer.train(mode)

    # --- reference model (KL term) -------------------------------------------------------------

    def prepare_reference(self) -> None:
        """Full fine-tune: keep a frozen copy (frozen dtype) of the transformer as it is now.
        LoRA needs nothing: the reference is the base model with adapters disabled."""
        if self.config.finetune == "full" and self._reference_model is None:
            reference = copy.deepcopy(self.transformer)
            reference.to(self.runtime.frozen_dtype).requires_grad_(False).eval()
            self._reference_model = reference

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, :meth:`predict` gives the frozen reference model."""
        if self._in_reference:  # nested: already the reference
            yield
            return
        if self.config.finetune == "full":
            if self._reference_model is None:
                raise RuntimeError(
                    "FluxPolicy.reference() under a full fine-tune needs prepare_reference() first"
                    " (it keeps the frozen copy of the transformer)"
                )
            self._in_reference = True
            try:
                yield
            finally:
                self._in_reference = False
            return
        self.transformer.disable_adapters()
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False
            self.transformer.enable_adapters()
            # peft toggles requires_grad with the adapters; restore exactly what trains.
            for param in self._trainable:
                param.requires_grad_(True)

    # --- trained weights -----------------------------------------------------------------------

    def save_trained(self, directory: str) -> None:
        """LoRA: pytorch_lora_weights.safetensors, as FluxPipeline.save_lora_weights writes it
        (FluxPipeline.load_lora_weights reads it back, alpha included). Full fine-tune:
        transformer/ as FluxTransformer2DModel.save_pretrained writes it.

        Under FSDP every rank must call this (the shards are gathered); rank 0 writes."""
        out = Path(directory)
        main = self.runtime.rank == 0
        if self.config.finetune == "lora":
            from diffusers import FluxPipeline
            from peft.utils import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER)
            state = {k: _full_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
            # The adapter config (alpha, rank, targets) travels in the safetensors metadata; without
            # it diffusers would assume alpha = rank and load a differently scaled model.
            metadata = self.transformer.peft_config[ADAPTER].to_dict()
            FluxPipeline.save_lora_weights(
                out,
                transformer_lora_layers=state,
                transformer_lora_adapter_metadata=metadata,
                is_main_process=main,
                safe_serialization=True,
            )
        else:
            self.transformer.save_pretrained(
                out / TRANSFORMER_DIR, is_main_process=main, safe_serialization=True
            )

    def load_trained(self, directory: str) -> None:
        """Load what :meth:`save_trained` wrote, in place (optimizer references stay valid).
        Raises UsageError when the directory holds no weights for this fine-tune mode or when
        the names or shapes do not match this policy's trainable weights exactly."""
        src = Path(directory)
        lora_file, full_dir = src / LORA_WEIGHT_NAME, src / TRANSFORMER_DIR
        if self.config.finetune == "lora":
            if lora_file.is_file():
                self._load_lora(lora_file)
                return
            if full_dir.is_dir():
                raise UsageError(
                    f"{src} holds a full fine-tune ({TRANSFORMER_DIR}/) but policy.finetune is"
                    " 'lora'; set policy.finetune=full to load it"
                )
        else:
            if full_dir.is_dir():
                self._load_full(full_dir)
                return
            if lora_file.is_file():
                raise UsageError(
                    f"{src} holds LoRA weights ({LORA_WEIGHT_NAME}) but policy.finetune is"
                    " 'full'; set policy.finetune=lora to load them"
                )
        raise UsageError(
            f"no trained FLUX weights in {src}: expected {LORA_WEIGHT_NAME} (LoRA) or"
            f" {TRANSFORMER_DIR}/ (full fine-tune)"
        )

    def _load_lora(self, file: Path) -> None:
        from peft.utils import get_peft_model_state_dict
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        prefix = "transformer."
        others = [k for k in saved if not k.startswith(prefix)]
        if others:
            raise UsageError(
                f"{file} has LoRA weights outside the transformer (e.g. {others[0]}); the FLUX"
                " policy trains the transformer only"
            )
        saved = {k[len(prefix) :]: v for k, v in saved.items()}
        # Map peft's state-dict names (adapter name dropped) to this model's own parameters; a
        # plain load_state_dict(strict=False) would silently skip every renamed key.
        params = {
            name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(
                f".lora_B.{ADAPTER}.", ".lora_B."
            ): param
            for name, param in self.transformer.named_parameters()
            if f".{ADAPTER}." in name
        }
        expected = set(get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER))
        if expected != set(params):  # pragma: no cover - a peft naming change
            raise RuntimeError("peft adapter names are not the ones FluxPolicy expects")
        self._check_match(file, saved, params, "policy.lora_targets")
        alpha = self._saved_lora_alpha(metadata)
        if alpha is not None and alpha != self.config.lora_alpha:
            raise UsageError(
                f"{file} was trained with lora_alpha={alpha} but policy.lora_alpha is"
                f" {self.config.lora_alpha}; set policy.lora_alpha={alpha}"
            )
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(saved[key])

    @staticmethod
    def _saved_lora_alpha(metadata: dict[str, str]) -> float | None:
        raw = metadata.get("lora_adapter_metadata")
        if not raw:
            return None
        alpha = json.loads(raw).get("transformer.lora_alpha")
        return None if alpha is None else float(alpha)

    def _load_full(self, folder: Path) -> None:
        from safetensors.torch import load_file

        index = folder / "diffusion_pytorch_model.safetensors.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            names = ["diffusion_pytorch_model.safetensors"]
        saved: dict[str, torch.Tensor] = {}
        for name in names:
            if not (folder / name).is_file():
                raise UsageError(f"{folder} has no {name}: the saved transformer is incomplete")
            saved.update(load_file(str(folder / name)))
        own = self.transformer.state_dict()  # tensors share storage with the parameters
        self._check_match(folder, saved, own, "the FLUX transformer")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(saved[key])

    @staticmethod
    def _check_match(
        source: Path,
        saved: dict[str, torch.Tensor],
        own: dict[str, torch.Tensor],
        what: str,
    ) -> None:
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        if missing or unexpected:
            detail = []
            if missing:
                detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            raise UsageError(
                f"trained weights in {source} do not match {what}: {', '.join(detail)}"
            )
        for key, tensor in own.items():
            if saved[key].shape != tensor.shape:
                raise UsageError(
                    f"trained weights in {source} do not match {what}: {key} has shape"
                    f" {tuple(saved[key].shape)}, expected {tuple(tensor.shape)}"
                    " (a different lora_rank?)"
                )
