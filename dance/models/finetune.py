"""The trained network of a diffusers policy: LoRA or full fine-tune, the frozen reference for the
KL term, and trained weights that the model's diffusers pipeline loads back.

A policy that trains one network of a diffusers pipeline (a FLUX or HunyuanVideo transformer, a
Stable Diffusion UNet) builds a :class:`TrainedWeights` around it and delegates to it (subclassing
:class:`FinetunedPolicy` does the delegating); its config declares the fields of
:class:`FinetuneOptions` (:class:`dance.diffusers_policy.DiffusersPolicyConfig` declares them):

- LoRA (``finetune = "lora"``): peft adapters, fp32, over frozen base weights in the runtime's
  frozen dtype. The reference model is the same network with its adapters disabled. Trained weights
  are ``pytorch_lora_weights.safetensors`` as the pipeline class's ``save_lora_weights`` writes it,
  adapter config (alpha) in its metadata, so ``pipeline.load_lora_weights`` reads it back.
- Full fine-tune (``finetune = "full"``): every fp32 weight trains; the reference is a frozen copy
  made by :meth:`TrainedWeights.prepare_reference`. Trained weights are the network's own
  ``save_pretrained`` folder, loadable with ``from_pretrained``.

Loading checks names and shapes strictly (a peft-wrapped model renames its weights, so a
``strict=False`` load would skip them silently) and every mismatch is one UsageError line.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from dance.errors import ConfigError, FileFault, UsageError
from dance.files import check_finite, first_line
from dance.interfaces import Policy, Runtime
from dance.models.model_layout import load_pretrained, shard_names

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what load_lora_weights reads
ADAPTER = "default"  # the peft adapter name
FULL_WEIGHTS_STEM = "diffusion_pytorch_model"  # what diffusers' save_pretrained writes


class FinetuneOptions(Protocol):
    """The policy config fields this module reads (each policy config declares them)."""

    finetune: str  # "lora" or "full"
    lora_rank: int
    lora_alpha: float
    lora_targets: Sequence[str]


@dataclass(frozen=True)
class TrainedNetwork:
    """What a policy trains, as diffusers names it.

    ``component`` is the pipeline component ("transformer", "unet"): the prefix of the LoRA
    state-dict keys and of ``save_lora_weights``' keywords (``transformer_lora_layers``).
    ``pipeline`` is the pipeline class whose ``save_lora_weights`` writes the LoRA file, or its
    name in ``diffusers`` (imported only when saving). ``model`` and ``label`` name the model and
    the network in messages ("FLUX", "transformer"); ``folder`` holds a full fine-tune (default:
    the component).
    """

    component: str
    pipeline: str | type
    model: str
    label: str = ""
    folder: str = ""

    @property
    def network_label(self) -> str:
        return self.label or self.component

    @property
    def full_folder(self) -> str:
        return self.folder or self.component


def weights_dtype(finetune: str, runtime: Runtime) -> torch.dtype:
    """The dtype to load the trained network in: LoRA trains fp32 adapters over frozen base
    weights (the frozen dtype); a full fine-tune trains the fp32 weights themselves."""
    return runtime.frozen_dtype if finetune == "lora" else torch.float32


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP2 shards); every rank must call this together."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class TrainedWeights:
    """The trainable ``network`` of policy ``policy``: its trainable parameters, how it computes,
    its reference model, and saving and loading what trained.

    Built from the network as loaded (in :func:`weights_dtype`, on the CPU or the device); adds
    LoRA adapters or unfreezes everything as ``options.finetune`` says, then moves the network to
    the runtime's device.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        target: TrainedNetwork,
        options: FinetuneOptions,
        runtime: Runtime,
        policy: str,
        lora_exclude: Sequence[str] = (),
    ) -> None:
        self.target, self.options, self.runtime, self.policy = target, options, runtime, policy
        # Modules (full names) that match lora_targets but get no adapter: ones whose output the
        # network discards, so that an adapter there could never train.
        self.lora_exclude = list(lora_exclude)
        self.lora = options.finetune == "lora"
        network.requires_grad_(False)
        if self.lora:
            self._add_lora(network)
        else:
            network.requires_grad_(True)
        self.network = network.to(runtime.device)
        # By name: FSDP2 sharding replaces the parameter objects but keeps their names.
        self.trainable_names = [n for n, p in self.network.named_parameters() if p.requires_grad]
        # bf16 autocast on CUDA (as DanceGRPO); CPU runs in the weights' own dtype.
        self.autocast = runtime.device.type == "cuda"
        if self.autocast:
            self.compute_dtype = torch.bfloat16
        else:
            self.compute_dtype = weights_dtype(options.finetune, runtime)
        self.reference_model: torch.nn.Module | None = None
        self.in_reference = False

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        """The trainable parameters as they are now (DTensor shards once FSDP2 has sharded)."""
        params = dict(self.network.named_parameters())
        return [params[name] for name in self.trainable_names]

    def _add_lora(self, network: torch.nn.Module) -> None:
        from peft import LoraConfig

        opts = self.options
        lora_config = LoraConfig(
            r=opts.lora_rank,
            lora_alpha=opts.lora_alpha,
            target_modules=list(opts.lora_targets),
            exclude_modules=self.lora_exclude or None,
            init_lora_weights="gaussian",  # as diffusers' LoRA training scripts
        )
        # A fixed seed, on CPU and apart from the global RNG: every rank of a run starts from the
        # same adapters (lora_B is zero, so the policy starts as the base model either way).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                network.add_adapter(lora_config, adapter_name=ADAPTER)
            except ValueError as exc:
                first_line = str(exc).strip().splitlines()[0]
                raise ConfigError(
                    f"policy.lora_targets {list(opts.lora_targets)} match no"
                    f" {self.target.model} {self.target.network_label} module ({first_line})"
                ) from None
        for name, param in network.named_parameters():
            is_lora = ".lora_A." in name or ".lora_B." in name
            if is_lora:
                param.data = param.data.to(torch.float32)
            param.requires_grad_(is_lora)

    # --- computing -----------------------------------------------------------------------------

    def forward_network(self) -> tuple[torch.nn.Module, torch.dtype]:
        """The module a policy's ``predict`` calls and the dtype of its inputs: inside
        :meth:`reference` under a full fine-tune, the frozen copy in the frozen dtype (unless
        autocast computes in bf16 anyway)."""
        if self.in_reference and not self.lora:
            dtype = self.compute_dtype if self.autocast else self.runtime.frozen_dtype
            return self.reference_model, dtype
        return self.network, self.compute_dtype

    def autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA, nothing elsewhere."""
        if self.autocast:
            return torch.autocast(self.runtime.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- reference model (KL term) -------------------------------------------------------------

    def prepare_reference(self) -> None:
        """Full fine-tune: keep a frozen copy (frozen dtype) of the network as it is now. LoRA
        needs nothing: the reference is the base network with the adapters disabled."""
        if not self.lora and self.reference_model is None:
            reference = copy.deepcopy(self.network)
            reference.to(self.runtime.frozen_dtype).requires_grad_(False).eval()
            self.reference_model = reference

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, :meth:`forward_network` gives the frozen reference model."""
        if self.in_reference:  # nested: already the reference
            yield
            return
        if not self.lora:
            if self.reference_model is None:
                raise RuntimeError(
                    f"policy '{self.policy}': reference() under a full fine-tune needs"
                    " prepare_reference() first (it keeps the frozen copy of the"
                    f" {self.target.network_label})"
                )
            self.in_reference = True
            try:
                yield
            finally:
                self.in_reference = False
            return
        self.network.disable_adapters()
        self.in_reference = True
        try:
            yield
        finally:
            self.in_reference = False
            self.network.enable_adapters()
            # peft toggles requires_grad with the adapters; restore exactly what trains.
            for param in self.trainable:
                param.requires_grad_(True)

    # --- trained weights -----------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """LoRA: pytorch_lora_weights.safetensors as the pipeline's save_lora_weights writes it
        (its load_lora_weights reads it back, alpha included). Full fine-tune: the network's
        save_pretrained folder.

        Under FSDP every rank must call this (the shards are gathered); rank 0 writes."""
        out = Path(directory)
        main = self.runtime.rank == 0
        if not self.lora:
            self._save_full(out / self.target.full_folder, main)
            return
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.network, adapter_name=ADAPTER)
        state = {k: _full_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
        # The adapter config (alpha, rank, targets) travels in the safetensors metadata; without
        # it diffusers would assume alpha = rank and load a differently scaled model.
        metadata = self.network.peft_config[ADAPTER].to_dict()
        component, pipeline = self.target.component, self.target.pipeline
        if isinstance(pipeline, str):
            import diffusers

            pipeline = getattr(diffusers, pipeline)
        pipeline.save_lora_weights(
            out,
            is_main_process=main,
            safe_serialization=True,
            **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": metadata},
        )

    def _save_full(self, folder: Path, main: bool) -> None:
        """The network's save_pretrained layout (config.json and safetensors shards with their
        index), written from the full state dict gathered on rank 0, so FSDP2 shards need no
        network-wide unshard on every rank."""
        from huggingface_hub import split_torch_state_dict_into_shards
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )
        from torch.distributed.fsdp import FSDPModule

        if isinstance(self.network, FSDPModule):  # every rank takes part, rank 0 gets it all
            state = get_model_state_dict(
                self.network, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        if not main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.network.save_config(folder)
        # fully_shard swaps the class for an FSDP subclass; the config names the model's own.
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text())
        own = next(c for c in type(self.network).__mro__ if not issubclass(c, FSDPModule))
        config["_class_name"] = own.__name__
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        pattern = FULL_WEIGHTS_STEM + "{suffix}.safetensors"
        split = split_torch_state_dict_into_shards(
            state,
            filename_pattern=pattern,
            max_shard_size="10GB",  # diffusers' default
        )
        for filename, names in split.filename_to_tensors.items():
            shard = {name: state[name].contiguous() for name in names}
            save_file(shard, str(folder / filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            index_file = folder / f"{FULL_WEIGHTS_STEM}.safetensors.index.json"
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def load(self, directory: str | Path) -> None:
        """Load what :meth:`save` wrote, in place (optimizer references stay valid). Raises
        UsageError when the directory holds no weights for this fine-tune mode or when the names
        or shapes do not match the trainable weights exactly."""
        src = Path(directory)
        folder = self.target.full_folder
        lora_file, full_dir = src / LORA_WEIGHT_NAME, src / folder
        if self.lora:
            if lora_file.is_file():
                self._load_lora(lora_file)
                return
            if full_dir.is_dir():
                raise UsageError(
                    f"{src} holds a full fine-tune ({folder}/) but policy.finetune is 'lora';"
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
            f"no trained {self.target.model} weights in {src}: expected {LORA_WEIGHT_NAME} (LoRA)"
            f" or {folder}/ (full fine-tune)"
        )

    def _load_lora(self, file: Path) -> None:
        from peft.utils import get_peft_model_state_dict
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                metadata = f.metadata() or {}
                saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no iter
        except Exception as exc:  # safetensors raises its own error types
            raise FileFault(
                f"trained weights {file} are corrupt or truncated ({first_line(exc)})"
            ) from None
        check_finite(saved.items(), file)
        prefix, label = f"{self.target.component}.", self.target.network_label
        others = [k for k in saved if not k.startswith(prefix)]
        if others:
            raise UsageError(
                f"{file} has LoRA weights outside the {label} (e.g. {others[0]}); policy"
                f" '{self.policy}' trains the {label} only"
            )
        saved = {k[len(prefix) :]: v for k, v in saved.items()}
        # Map peft's state-dict names (adapter name dropped) to this model's own parameters; a
        # plain load_state_dict(strict=False) would silently skip every renamed key.
        params = {
            name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(
                f".lora_B.{ADAPTER}.", ".lora_B."
            ): param
            for name, param in self.network.named_parameters()
            if f".{ADAPTER}." in name
        }
        expected = set(get_peft_model_state_dict(self.network, adapter_name=ADAPTER))
        if expected != set(params):  # pragma: no cover - a peft naming change
            raise RuntimeError(
                f"peft adapter names are not the ones policy '{self.policy}' expects"
            )
        check_match(file, saved, params, "policy.lora_targets")
        alpha = saved_lora_alpha(metadata, self.target.component)
        if alpha is not None and alpha != self.options.lora_alpha:
            raise UsageError(
                f"{file} was trained with lora_alpha={alpha} but policy.lora_alpha is"
                f" {self.options.lora_alpha}; set policy.lora_alpha={alpha}"
            )
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(saved[key])

    def _load_full(self, folder: Path) -> None:
        from safetensors.torch import load_file

        index = folder / f"{FULL_WEIGHTS_STEM}.safetensors.index.json"
        names = shard_names(index) if index.is_file() else [f"{FULL_WEIGHTS_STEM}.safetensors"]
        label = self.target.network_label
        saved: dict[str, torch.Tensor] = {}
        for name in names:
            if not (folder / name).is_file():
                raise UsageError(f"{folder} has no {name}: the saved {label} is incomplete")
            try:
                part = load_file(str(folder / name))
            except Exception as exc:  # safetensors raises its own error types
                raise FileFault(
                    f"trained weights {folder / name} are corrupt or truncated ({first_line(exc)})"
                ) from None
            check_finite(part.items(), folder / name)
            saved.update(part)
        own = self.network.state_dict()  # tensors share storage with the parameters
        check_match(folder, saved, own, f"the {self.target.model} {label}")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(saved[key])


def saved_lora_alpha(metadata: dict[str, str], component: str) -> float | None:
    """The LoRA alpha that ``save_lora_weights`` stored in a file's metadata, if any."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    alpha = json.loads(raw).get(f"{component}.lora_alpha")
    return None if alpha is None else float(alpha)


def check_match(
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


class FinetunedPolicy(Policy):
    """A policy whose trainable network is ``self.trained`` (a :class:`TrainedWeights` that
    :meth:`load_network` builds): the trainable parameters, mode switches, reference model and
    trained weights of the :class:`~dance.interfaces.Policy` interface all delegate to it.

    Subclasses set ``trained_network`` and have a config with the :class:`FinetuneOptions`."""

    trained_network: ClassVar[TrainedNetwork]
    trained: TrainedWeights

    def load_network(self, model_class: Any, folder: str | Path) -> Any:
        """Load the trainable network with ``model_class.from_pretrained(folder)`` (local files
        only, in :func:`weights_dtype`), set up LoRA or a full fine-tune on it and move it to
        the device; returns it."""
        network = load_pretrained(
            model_class, Path(folder), torch_dtype=weights_dtype(self.config.finetune, self.runtime)
        )
        self.trained = TrainedWeights(
            network,
            self.trained_network,
            self.config,
            self.runtime,
            self.name,
            lora_exclude=self.lora_exclude(network),
        )
        return self.trained.network

    def lora_exclude(self, network: torch.nn.Module) -> list[str]:
        """Full names of modules of ``network`` that LoRA leaves alone although they match
        policy.lora_targets (none by default)."""
        return []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.trained.trainable)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.trained.network]

    def train(self, mode: bool = True) -> None:
        self.trained.network.train(mode)

    def prepare_reference(self) -> None:
        """Full fine-tune: keep a frozen copy of the network as it is now (LoRA: nothing)."""
        self.trained.prepare_reference()

    def reference(self) -> contextlib.AbstractContextManager[None]:
        """Inside, ``predict`` gives the frozen reference model (LoRA: adapters disabled), if it
        calls the network that :meth:`TrainedWeights.forward_network` returns."""
        return self.trained.reference()

    def save_trained(self, directory: str) -> None:
        """See :meth:`TrainedWeights.save`; under FSDP every rank calls this, rank 0 writes."""
        self.trained.save(directory)

    def load_trained(self, directory: str) -> None:
        """See :meth:`TrainedWeights.load`: in place, UsageError on any mismatch."""
        self.trained.load(directory)

    @property
    def _reference_model(self) -> torch.nn.Module | None:
        """The frozen copy of a full fine-tune (None with LoRA or before prepare_reference)."""
        return self.trained.reference_model
