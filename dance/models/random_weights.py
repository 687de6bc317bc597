"""Full-size networks with random weights, loaded through a policy's own ``from_pretrained`` calls.

A network's cost in time and memory does not depend on its weights, so a benchmark can measure a
12 B-parameter transformer that was never downloaded: build it from its published config.json with
random weights. Two pieces do that here:

* :func:`write_random_layout` turns a checkpoint folder in a diffusers layout (written by a
  plugin's tiny builder: model_index.json, tokenizers, scheduler, one folder per network) into a
  *random-weights folder*: each network folder gets the config.json it should have (the full-size
  published one, or its own) and, in place of its weight files, a one-tensor marker file and
  ``dance-random-weights.json``, so the policy's layout checks still pass.
* Inside :func:`random_weights`, ``from_pretrained`` of every diffusers ``ModelMixin`` and
  transformers ``PreTrainedModel`` class, given such a folder, builds the model from the folder's
  config.json on the meta device (no memory, no time), materialises it directly on the target
  device with ``to_empty`` in the dtype that was asked for, and fills it with
  :func:`init_random_`. Any other folder loads as usual.

So everything a policy does after loading (LoRA, freezing, dtypes, offloading, gradient
checkpointing, moving to the device) runs its own code, on networks of the real size.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

MARKER = "dance-random-weights.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_INDEX_SUFFIX = ".index.json"


def is_random_folder(path: str | Path) -> bool:
    """Whether ``path`` is a network folder written by :func:`write_random_layout`."""
    return (Path(path) / MARKER).is_file()


def write_random_layout(
    root: str | Path,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Path:
    """Make every network folder under ``root`` (a folder holding ``config.json`` and weight files)
    a random-weights folder; ``configs[folder]`` replaces that folder's config.json (full-size
    published configs), ``sources[folder]`` says where it comes from. Returns ``root``."""
    root = Path(root)
    configs, sources = configs or {}, sources or {}
    unknown = set(configs) - {
        p.parent.relative_to(root).as_posix() for p in root.rglob("config.json")
    }
    if unknown:
        raise ValueError(f"{root} has no network folder {sorted(unknown)[0]} to give a config to")
    for config_file in sorted(root.rglob("config.json")):
        folder = config_file.parent
        weights = [
            p for p in folder.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES + (_INDEX_SUFFIX,))
        ]
        if not weights:
            continue  # not a network folder (a processor, say)
        name = folder.relative_to(root).as_posix()
        original = json.loads(config_file.read_text())
        if name in configs:
            config = dict(configs[name])
            # Keep the loader's own bookkeeping keys (class name, library version) of the folder.
            for key in ("_class_name", "_diffusers_version", "architectures", "model_type"):
                if key in original and key not in config:
                    config[key] = original[key]
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        stem = _marker_weight_name(weights)
        for path in weights:
            path.unlink()
        _write_marker_weights(folder / stem)
        (folder / MARKER).write_text(
            json.dumps({"config": sources.get(name, "the folder's own config.json")}, indent=2)
            + "\n"
        )
    return root


def _marker_weight_name(weights: list[Path]) -> str:
    """The unsharded weight file name the folder's loader looks for first."""
    names = " ".join(p.name for p in weights)
    return (
        "diffusion_pytorch_model.safetensors"
        if "diffusion_pytorch_model" in names
        else "model.safetensors"
    )


def _write_marker_weights(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"dance_random_weights": torch.zeros(1)}, str(path))


@torch.no_grad()
def init_random_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter: matrices and kernels ~ N(0, 1/fan_in) (activations keep their scale
    through each layer), 1-D ``*weight`` (norm scales) = 1, other 1-D tensors (biases) = 0."""
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            fan_in = param[0].numel()
            param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        elif name.endswith("weight"):
            param.fill_(1.0)
        else:
            param.zero_()


class ParametersOnMeta:
    """Parameters created inside go to the meta device; buffers stay real (position ids, rotary
    frequencies are computed in the constructors and must survive)."""

    def __enter__(self) -> None:
        self._original = torch.nn.Module.register_parameter

        def register(module: torch.nn.Module, name: str, param: Any) -> None:
            self._original(module, name, param)
            if param is not None and not param.is_meta:
                kind = type(param)
                meta = param.to("meta")
                module._parameters[name] = kind(meta, requires_grad=param.requires_grad)

        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        torch.nn.Module.register_parameter = self._original  # type: ignore[method-assign]


def _keep_fp32_patterns(cls: type) -> list[str]:
    """Module name parts the library keeps in fp32 when loading in half precision (T5's ``wo``)."""
    patterns = getattr(cls, "_keep_in_fp32_modules", None) or []
    return [patterns] if isinstance(patterns, str) else list(patterns)


def materialise(
    model: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
    generator: torch.Generator,
) -> torch.nn.Module:
    """Meta parameters -> ``dtype`` (fp32 where the class keeps modules in fp32) on ``device``
    through ``to_empty``, then :func:`init_random_`; real buffers are kept."""
    keep = _keep_fp32_patterns(type(model))
    for name, param in model.named_parameters():
        if dtype is not None and param.is_floating_point():
            in_fp32 = any(part in name.split(".") for part in keep)
            param.data = param.data.to(torch.float32 if in_fp32 else dtype)
    buffers = {name: b.clone() for name, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=device)
    for name, value in buffers.items():  # to_empty left them uninitialised
        owner, _, attr = name.rpartition(".")
        target = model.get_submodule(owner) if owner else model
        target._buffers[attr] = value.to(device)
    init_random_(model, generator)
    return model


def _dtype_of(kwargs: Mapping[str, Any]) -> torch.dtype | None:
    dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
    return dtype if isinstance(dtype, torch.dtype) else None


@contextlib.contextmanager
def random_weights(device: torch.device | str, seed: int = 0) -> Iterator[None]:
    """Inside, ``from_pretrained`` of a random-weights folder (see :func:`write_random_layout`)
    builds the model from its config.json with random weights on ``device``, in the dtype the
    caller asked for; other folders load as usual."""
    from diffusers.models.modeling_utils import ModelMixin
    from transformers.modeling_utils import PreTrainedModel

    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    originals = {
        ModelMixin: ModelMixin.__dict__["from_pretrained"],
        PreTrainedModel: PreTrainedModel.__dict__["from_pretrained"],
    }

    def diffusers_build(cls: type, path: Any, **kwargs: Any) -> Any:
        config = cls.load_config(path)
        with ParametersOnMeta():
            model = cls.from_config(config)
        return materialise(model, device, _dtype_of(kwargs), generator).eval()

    def transformers_build(cls: type, path: Any, **kwargs: Any) -> Any:
        config = cls.config_class.from_pretrained(path)
        if kwargs.get("attn_implementation"):
            config._attn_implementation = kwargs["attn_implementation"]
        with ParametersOnMeta():
            model = cls(config)
        return materialise(model, device, _dtype_of(kwargs), generator).eval()

    def patched(base: type, build: Any) -> classmethod:
        original = originals[base].__func__

        def from_pretrained(cls: type, path: Any = None, *args: Any, **kwargs: Any) -> Any:
            if path is not None and not args and is_random_folder(path):
                # Every weight is drawn here, none is missing (dance's checked loader asks).
                with_info = kwargs.pop("output_loading_info", False)
                model = build(cls, path, **kwargs)
                if with_info:
                    return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
                return model
            return original(cls, path, *args, **kwargs)

        return classmethod(from_pretrained)

    ModelMixin.from_pretrained = patched(ModelMixin, diffusers_build)  # type: ignore[method-assign]
    PreTrainedModel.from_pretrained = patched(PreTrainedModel, transformers_build)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for base, original in originals.items():
            base.from_pretrained = original  # type: ignore[method-assign]
