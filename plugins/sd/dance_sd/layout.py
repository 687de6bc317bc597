"""Find a Stable Diffusion 1.x checkpoint on this machine and check it is in the diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``stable-diffusion-v1-5/stable-diffusion-
v1-5``, ``CompVis/stable-diffusion-v1-4``) looked up in the local Hugging Face cache only: nothing
is ever downloaded. Every problem is one :class:`~dance.errors.ModelLayoutError` line naming the
missing path and the expected layout. ``safety_checker/`` and ``feature_extractor/`` are not needed
(the policy never runs the safety checker) and may be null in ``model_index.json`` or absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dance.errors import ModelLayoutError

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

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path or a cached repo id."""
    path = Path(model).expanduser()
    if path.is_dir():
        check_layout(path)
        return path
    if path.exists():
        raise ModelLayoutError(f"model path {path} is a file, not a directory; {EXPECTED}")
    if not _REPO_ID.match(model) or model.startswith((".", "~")):
        raise ModelLayoutError(f"model directory {path} does not exist; {EXPECTED}")
    snapshot = _cached_snapshot(model, cache_dir)
    check_layout(snapshot)
    return snapshot


def _cached_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path:
    """The cached snapshot of ``repo_id`` that refs/main points at; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except Exception as exc:  # LocalEntryNotFoundError and friends: all mean "not cached"
        raise ModelLayoutError(
            f"model '{repo_id}' is not a local directory and not in the Hugging Face cache"
            f" ({type(exc).__name__}); download it first (`hf download {repo_id}`) or pass a"
            " local path to a diffusers Stable Diffusion 1.x checkpoint"
        ) from None
    return Path(found)


def check_layout(path: Path) -> None:
    """Raise ModelLayoutError naming the first missing or unsupported piece under ``path``."""
    for rel in REQUIRED_FILES:
        if not (path / rel).is_file():
            raise ModelLayoutError(f"model directory {path} has no {rel}; {EXPECTED}")
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
                _check_shards(path, index)
                continue
            variants = sorted(p.name for p in (path / folder).glob("*.safetensors"))
            hint = f" (found only {', '.join(variants)}: download the full-precision files)"
            raise ModelLayoutError(
                f"model directory {path} has no {folder}/{names[0]}"
                f"{hint if variants else ''}; {EXPECTED}"
            )
    _check_model_index(path)


def _check_shards(path: Path, index: Path) -> None:
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    for shard in shards:
        if not (index.parent / shard).is_file():
            rel = index.parent.relative_to(path) / shard
            raise ModelLayoutError(
                f"model directory {path} has no {rel} (listed in {index.name}); {EXPECTED}"
            )


def _check_model_index(path: Path) -> None:
    """Other diffusers checkpoints share most folders: SDXL (a second text encoder), SD 2.x-v
    (v-prediction), inpainting UNets (9 input channels). Name what does not fit."""
    index = json.loads((path / "model_index.json").read_text())
    unet_class = (index.get("unet") or [None, None])[-1]
    if unet_class != "UNet2DConditionModel":
        raise ModelLayoutError(
            f"model directory {path} is not a Stable Diffusion checkpoint: model_index.json names"
            f" unet class {unet_class!r}, expected 'UNet2DConditionModel'"
        )
    if index.get("text_encoder_2"):
        raise ModelLayoutError(
            f"model directory {path} has a second text encoder (Stable Diffusion XL?); the 'sd'"
            " policy supports Stable Diffusion 1.x (one CLIP text encoder)"
        )
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLayoutError(
            f"model directory {path} predicts {prediction!r} (scheduler/scheduler_config.json);"
            " the 'sd' policy supports epsilon-prediction models (Stable Diffusion 1.x)"
        )
    unet_config = json.loads((path / "unet" / "config.json").read_text())
    if unet_config.get("in_channels", 4) != 4:
        raise ModelLayoutError(
            f"model directory {path} has a UNet with {unet_config.get('in_channels')} input"
            " channels (an inpainting model?); the 'sd' policy needs 4 (text-to-image)"
        )
