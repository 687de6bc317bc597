"""The Stable Diffusion 1.x policy: a latent diffusion UNet predicting noise (SD 1.4, SD 1.5).

Prompt encoding, classifier-free guidance, the UNet call and decoding follow diffusers'
``StableDiffusionPipeline`` (pipelines/stable_diffusion/pipeline_stable_diffusion.py), so that the
policy and the pipeline given the same inputs compute the same tensors, and trained weights load
back into the pipeline (``load_lora_weights`` for LoRA, ``unet/`` for a full fine-tune).
Guidance runs in rollouts and in training alike, as in DanceGRPO's and DDPO's SD scripts
(``train.cfg = True``): the trained output is ``eps_u + s * (eps_c - eps_u)``.
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
from dance_sd.layout import resolve_model

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what load_lora_weights reads
UNET_DIR = "unet"  # a full fine-tune, loadable as UNet2DConditionModel
ADAPTER = "default"


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
    finetune: str = option(
        "lora",
        "What trains: LoRA adapters on the UNet ('lora') or the whole UNet ('full', as DanceGRPO's "
        "SD script does).",
        choices=("lora", "full"),
    )
    lora_rank: int = option(
        4, "LoRA rank r (DDPO's SD LoRA: 4, the diffusers LoRA attention processor default).", ge=1
    )
    lora_alpha: float = option(
        4.0, "LoRA alpha; the adapter output is scaled by alpha / r (DDPO: alpha = r).", gt=0
    )
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
        if self.finetune == "lora" and not self.lora_targets:
            raise ConfigError("policy.lora_targets is empty: name the modules that get LoRA")


def _transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers 5 names the load dtype `dtype`; 4.x calls it `torch_dtype`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP2 shards); every rank must call this together."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class SDPolicy(Policy):
    """Stable Diffusion 1.x text-to-image: a CLIP text encoder, a UNet over 4-channel latents
    predicting the noise, and the SD VAE. Classifier-free guidance with the empty prompt."""

    name = "sd"
    config_class = SDConfig
    modality = "image"
    prediction_type = "epsilon"

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
        # Offloading only means something when the weights would otherwise sit on an accelerator.
        self._offload = config.offload_frozen and runtime.device.type != "cpu"
        if config.offload_frozen and not self._offload:
            logger.info("policy.offload_frozen has no effect on %s", runtime.device)
        self._load_components()

        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._reference_model: torch.nn.Module | None = None
        self._in_reference = False
        # The unconditional (empty-prompt) embedding [1, 77, D], encoded once: every guided UNet
        # call pairs it with the prompts (StableDiffusionPipeline.encode_prompt with
        # negative_prompt=None encodes "" padded to the prompt length).
        self._uncond = self._encode_texts([""])

    # --- loading -------------------------------------------------------------------------------

    def _load_components(self) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        cfg, path = self.config, self.path
        device, frozen = self.runtime.device, self.runtime.frozen_dtype
        home = torch.device("cpu") if self._offload else device

        def freeze(module: torch.nn.Module, where: torch.device) -> Any:
            return module.requires_grad_(False).eval().to(where)

        self.tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        self.text_encoder = freeze(
            CLIPTextModel.from_pretrained(
                path / "text_encoder", local_files_only=True, **_transformers_dtype(frozen)
            ),
            home,
        )
        self.vae = freeze(
            AutoencoderKL.from_pretrained(path / "vae", torch_dtype=frozen, local_files_only=True),
            home,
        )
        # StableDiffusionPipeline.__init__: 2 ** (number of VAE blocks - 1), 8 for SD's VAE.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        factor = self.vae_scale_factor
        if cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"policy.height and policy.width must be multiples of {factor} (the VAE factor of"
                f" {path}), got {cfg.height}x{cfg.width}"
            )

        lora = cfg.finetune == "lora"
        # LoRA trains fp32 adapters over frozen base weights (frozen dtype); a full fine-tune
        # trains the fp32 weights themselves.
        unet = UNet2DConditionModel.from_pretrained(
            path / "unet", torch_dtype=frozen if lora else torch.float32, local_files_only=True
        )
        unet.requires_grad_(False)
        if lora:
            self._add_lora(unet)
        else:
            unet.requires_grad_(True)
        self.unet = unet.to(device)
        self._trainable = [p for p in self.unet.parameters() if p.requires_grad]
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.latent_shape = (
            self.unet.config.in_channels,
            cfg.height // factor,
            cfg.width // factor,
        )
        # bf16 autocast on CUDA (as DanceGRPO's mixed_precision="bf16"); CPU runs in the weights'
        # own dtype.
        self._autocast = device.type == "cuda"
        if self._autocast:
            self._compute_dtype = torch.bfloat16
        else:
            self._compute_dtype = frozen if lora else torch.float32

    def _add_lora(self, unet: torch.nn.Module) -> None:
        from peft import LoraConfig

        cfg = self.config
        lora_config = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_targets),
            init_lora_weights="gaussian",  # as diffusers' train_text_to_image_lora.py
        )
        # A fixed seed, on CPU and apart from the global RNG: every rank of a run starts from the
        # same adapters (lora_B is zero, so the policy starts as the base model either way).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                unet.add_adapter(lora_config, adapter_name=ADAPTER)
            except ValueError as exc:
                first_line = str(exc).strip().splitlines()[0]
                raise ConfigError(
                    f"policy.lora_targets {list(cfg.lora_targets)} match no UNet module"
                    f" ({first_line})"
                ) from None
        for name, param in unet.named_parameters():
            is_lora = ".lora_A." in name or ".lora_B." in name
            if is_lora:
                param.data = param.data.to(torch.float32)
            param.requires_grad_(is_lora)

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``module`` on the run's device for the duration of the block; with offload_frozen it
        lives in CPU memory otherwise and its GPU copy is freed afterwards."""
        if not self._offload:
            yield module
            return
        module.to(self.runtime.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.runtime.device.type == "cuda":
                torch.cuda.empty_cache()

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
        with self._on_device(self.text_encoder) as encoder:
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
        model, dtype = self.unet, self._compute_dtype
        if self._in_reference and self.config.finetune == "full":
            model = self._reference_model
            if not self._autocast:  # the frozen copy computes in the frozen dtype
                dtype = self.runtime.frozen_dtype
        device = self.runtime.device
        batch = latents.shape[0]
        x = latents.to(device, dtype)
        t = timesteps.to(device).expand(batch)
        embeds = cond["prompt_embeds"].to(device, dtype)
        guided = self.config.guidance_scale > 1.0
        if guided:
            uncond = self._uncond.to(device, dtype).expand(batch, -1, -1)
            x, t, embeds = torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, embeds])
        with self._autocast_context():
            eps = model(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
        eps = eps.float()
        if not guided:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + self.config.guidance_scale * (eps_cond - eps_uncond)

    def _autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast:
            return torch.autocast(self.runtime.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [0, 1] (fp32), as the pipeline's output stage: undo the VAE
        scaling factor, decode, map [-1, 1] to [0, 1]; in chunks of decode_batch_size."""
        scale = self.vae.config.scaling_factor
        images = []
        with self._on_device(self.vae) as vae:
            for chunk in latents.split(self.config.decode_batch_size):
                x = chunk.to(self.runtime.device, vae.dtype) / scale
                images.append(vae.decode(x, return_dict=False)[0].float())
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._trainable)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.unet]

    def train(self, mode: bool = True) -> None:
        self.unet.train(mode)

    # --- reference model (KL term) -------------------------------------------------------------

    def prepare_reference(self) -> None:
        """Full fine-tune: keep a frozen copy (frozen dtype) of the UNet as it is now. LoRA needs
        nothing: the reference is the base UNet with the adapters disabled."""
        if self.config.finetune == "full" and self._reference_model is None:
            reference = copy.deepcopy(self.unet)
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
                    "SDPolicy.reference() under a full fine-tune needs prepare_reference() first"
                    " (it keeps the frozen copy of the UNet)"
                )
            self._in_reference = True
            try:
                yield
            finally:
                self._in_reference = False
            return
        self.unet.disable_adapters()
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False
            self.unet.enable_adapters()
            # peft toggles requires_grad with the adapters; restore exactly what trains.
            for param in self._trainable:
                param.requires_grad_(True)

    # --- trained weights -----------------------------------------------------------------------

    def save_trained(self, directory: str) -> None:
        """LoRA: pytorch_lora_weights.safetensors as StableDiffusionPipeline.save_lora_weights
        writes it (load_lora_weights reads it back, alpha included). Full fine-tune: unet/ as
        UNet2DConditionModel.save_pretrained writes it.

        Under FSDP every rank must call this (the shards are gathered); rank 0 writes."""
        out = Path(directory)
        main = self.runtime.rank == 0
        if self.config.finetune == "lora":
            from diffusers import StableDiffusionPipeline
            from peft.utils import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.unet, adapter_name=ADAPTER)
            state = {k: _full_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
            # The adapter config (alpha, rank, targets) travels in the safetensors metadata;
            # without it diffusers would assume alpha = rank and load a differently scaled model.
            metadata = self.unet.peft_config[ADAPTER].to_dict()
            StableDiffusionPipeline.save_lora_weights(
                out,
                unet_lora_layers=state,
                unet_lora_adapter_metadata=metadata,
                is_main_process=main,
                safe_serialization=True,
            )
        else:
            self.unet.save_pretrained(out / UNET_DIR, is_main_process=main, safe_serialization=True)

    def load_trained(self, directory: str) -> None:
        """Load what :meth:`save_trained` wrote, in place (optimizer references stay valid).
        Raises UsageError when the directory holds no weights for this fine-tune mode or when the
        names or shapes do not match this policy's trainable weights exactly."""
        src = Path(directory)
        lora_file, full_dir = src / LORA_WEIGHT_NAME, src / UNET_DIR
        if self.config.finetune == "lora":
            if lora_file.is_file():
                self._load_lora(lora_file)
                return
            if full_dir.is_dir():
                raise UsageError(
                    f"{src} holds a full fine-tune ({UNET_DIR}/) but policy.finetune is 'lora';"
                    " set policy.finetune=full to load it"
                )
        else:
            if full_dir.is_dir():
                self._load_full(full_dir)
                return
            if lora_file.is_file():
                raise UsageError(
                    f"{src} holds LoRA weights ({LORA_WEIGHT_NAME}) but policy.finetune is 'full';"
                    " set policy.finetune=lora to load them"
                )
        raise UsageError(
            f"no trained Stable Diffusion weights in {src}: expected {LORA_WEIGHT_NAME} (LoRA) or"
            f" {UNET_DIR}/ (full fine-tune)"
        )

    def _load_lora(self, file: Path) -> None:
        from peft.utils import get_peft_model_state_dict
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        prefix = "unet."
        others = [k for k in saved if not k.startswith(prefix)]
        if others:
            raise UsageError(
                f"{file} has LoRA weights outside the UNet (e.g. {others[0]}); the 'sd' policy"
                " trains the UNet only"
            )
        saved = {k[len(prefix) :]: v for k, v in saved.items()}
        # Map peft's state-dict names (adapter name dropped) to this model's own parameters; a
        # plain load_state_dict(strict=False) would silently skip every renamed key.
        params = {
            name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(
                f".lora_B.{ADAPTER}.", ".lora_B."
            ): param
            for name, param in self.unet.named_parameters()
            if f".{ADAPTER}." in name
        }
        expected = set(get_peft_model_state_dict(self.unet, adapter_name=ADAPTER))
        if expected != set(params):  # pragma: no cover - a peft naming change
            raise RuntimeError("peft adapter names are not the ones SDPolicy expects")
        _check_match(file, saved, params, "policy.lora_targets")
        alpha = _saved_lora_alpha(metadata)
        if alpha is not None and alpha != self.config.lora_alpha:
            raise UsageError(
                f"{file} was trained with lora_alpha={alpha} but policy.lora_alpha is"
                f" {self.config.lora_alpha}; set policy.lora_alpha={alpha}"
            )
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(saved[key])

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
                raise UsageError(f"{folder} has no {name}: the saved UNet is incomplete")
            saved.update(load_file(str(folder / name)))
        own = self.unet.state_dict()  # tensors share storage with the parameters
        _check_match(folder, saved, own, "the Stable Diffusion UNet")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(saved[key])


def _saved_lora_alpha(metadata: dict[str, str]) -> float | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    alpha = json.loads(raw).get("unet.lora_alpha")
    return None if alpha is None else float(alpha)


def _check_match(
    source: Path, saved: dict[str, torch.Tensor], own: dict[str, torch.Tensor], what: str
) -> None:
    """Raise UsageError unless ``saved`` has exactly the names and shapes of ``own``."""
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UsageError(f"trained weights in {source} do not match {what}: {', '.join(detail)}")
    for key, tensor in own.items():
        if saved[key].shape != tensor.shape:
            raise UsageError(
                f"trained weights in {source} do not match {what}: {key} has shape"
                f" {tuple(saved[key].shape)}, expected {tuple(tensor.shape)}"
                " (a different lora_rank?)"
            )
