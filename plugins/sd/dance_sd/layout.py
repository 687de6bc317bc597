"""Find a Stable Diffusion 1.x checkpoint on this machine and check it is in the diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``stable-diffusion-v1-5/stable-diffusion-
v1-5``, ``CompVis/stable-diffusion-v1-4``) looked up in the local Hugging Face cache only: nothing
is ever downloaded. Every problem is one :class:`~dance.errors.ModelLayoutError` line naming the
missing path and the expected layout. ``safety_checker/`` and ``feature_extractor/`` are not needed
(the policy never runs the safety checker) and may be null in ``model_index.json`` or absent.
"""

from __future__ import annotations

from pathlib import Path

from dance.errors import ModelLayoutError
from dance.files import read_json
from dance.models.model_layout import (
    check_files,
    check_index_classes,
    check_shards,
    find_checkpoint,
)

EXPECTED = (
    "expected the diffusers Stable Diffusion 1.x layout: model_index.json, unet/, vae/,"
    " text_encoder/, tokenizer/, scheduler/"
)

# Files every SD 1.x checkpoint has (StableDiffusionPipeline.save_pretrained writes these).
REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
# The tokenizer folder holds vocab.json + merges.txt (the SD repositories) or a tokenizer.json.
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
# The weight files from_pretrained loads without a variant: safetensors first, else the .bin.
WEIGHTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path or a cached repo id."""
    what = "a diffusers Stable Diffusion 1.x checkpoint"
    path = find_checkpoint(model, EXPECTED, what, cache_dir=cache_dir)
    check_layout(path)
    return path


def check_layout(path: Path) -> None:
    """Raise ModelLayoutError naming the first missing or unsupported piece under ``path``."""
    check_files(path, REQUIRED_FILES, EXPECTED)
    tokenizer = path / "tokenizer"
    if not any(all((tokenizer / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise ModelLayoutError(
            f"model directory {path} has no tokenizer/vocab.json + tokenizer/merges.txt (nor a"
            f" tokenizer/tokenizer.json); {EXPECTED}"
        )
    for folder, names in WEIGHTS.items():
        if not any((path / folder / name).is_file() for name in names):
            index = path / folder / f"{names[0]}.index.json"
            if index.is_file():
                check_shards(path, index, EXPECTED)
                continue
            variants = sorted(p.name for p in (path / folder).glob("*.safetensors"))
            hint = f" (found only {', '.join(variants)}: download the full-precision files)"
            raise ModelLayoutError(
                f"model directory {path} has no {folder}/{names[0]}"
                f"{hint if variants else ''}; {EXPECTED}"
            )
    _check_model_index(path)


def _check_model_index(path: Path) -> None:
    """Other diffusers checkpoints share most folders: SDXL (a second text encoder), SD 2.x-v
    (v-prediction), inpainting UNets (9 input channels). Name what does not fit."""
    index = check_index_classes(path, {"unet": "UNet2DConditionModel"}, "Stable Diffusion")
    if index.get("text_encoder_2"):
        raise ModelLayoutError(
            f"model directory {path} has a second text encoder (Stable Diffusion XL?); the 'sd'"
            " policy supports Stable Diffusion 1.x (one CLIP text encoder)"
        )
    scheduler = read_json(path / "scheduler" / "scheduler_config.json", "scheduler config")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLayoutError(
            f"model directory {path} predicts {prediction!r} (scheduler/scheduler_config.json);"
            " the 'sd' policy supports epsilon-prediction models (Stable Diffusion 1.x)"
        )
    unet_config = read_json(path / "unet" / "config.json", "UNet config")
    if unet_config.get("in_channels", 4) != 4:
        raise ModelLayoutError(
            f"model directory {path} has a UNet with {unet_config.get('in_channels')} input"
            " channels (an inpainting model?); the 'sd' policy needs 4 (text-to-image)"
        )
