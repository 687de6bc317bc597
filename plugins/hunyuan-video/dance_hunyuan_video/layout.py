"""Find a HunyuanVideo-family checkpoint on this machine and check its diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``hunyuanvideo-community/HunyuanVideo``)
looked up in the local Hugging Face cache only: nothing is ever downloaded. A separate transformer
(SkyReels-V1 ships only its transformer, ``Skywork/SkyReels-V1-Hunyuan-I2V``) is found the same
way. Every problem is one :class:`~dance.errors.ModelLayoutError` line naming the missing path and
the expected layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dance.errors import ModelLayoutError

EXPECTED = (
    "expected the diffusers HunyuanVideo layout (hunyuanvideo-community/HunyuanVideo): "
    "model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
    "tokenizer_2/, scheduler/"
)
EXPECTED_TRANSFORMER = (
    "expected a diffusers HunyuanVideoTransformer3DModel folder: config.json and "
    "diffusion_pytorch_model.safetensors (or a shard index with its shards)"
)

# Files every checkpoint has (HunyuanVideoPipeline.save_pretrained writes these).
REQUIRED_FILES = (
    "model_index.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
)
# Tokenizer folders: their files vary (tokenizer.json, vocab.json + merges.txt).
REQUIRED_DIRS = ("tokenizer", "tokenizer_2")
# Frozen parts: any weight file will do here, from_pretrained sorts out the format.
FROZEN_WEIGHTS = ("vae", "text_encoder", "text_encoder_2")
# model_index.json entries that tell this family apart from other video checkpoints (the official
# HunyuanVideo-I2V, say, has a LLaVA text encoder and an image processor).
INDEX_CLASSES = {
    "transformer": "HunyuanVideoTransformer3DModel",
    "vae": "AutoencoderKLHunyuanVideo",
    "text_encoder": "LlamaModel",
    "text_encoder_2": "CLIPTextModel",
}
WEIGHTS_STEM = "diffusion_pytorch_model"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str, check_transformer: bool = True) -> Path:
    """The checked checkpoint directory for ``model`` (a local path or a cached repo id).

    ``check_transformer=False`` when the transformer comes from elsewhere (policy.transformer)."""
    path = _local_or_cached(model, EXPECTED, "a diffusers HunyuanVideo checkpoint")
    check_layout(path, check_transformer)
    return path


def resolve_transformer(transformer: str) -> Path:
    """The checked folder of a separately given transformer (a local path or a cached repo id)."""
    path = _local_or_cached(transformer, EXPECTED_TRANSFORMER, "a transformer folder")
    check_transformer_folder(path)
    return path


def _local_or_cached(name: str, expected: str, what: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLayoutError(f"{path} is a file, not a directory; {expected}")
    if not _REPO_ID.match(name) or name.startswith((".", "~")):
        raise ModelLayoutError(f"directory {path} does not exist; {expected}")
    return _cached_snapshot(name, what)


def _cached_snapshot(repo_id: str, what: str) -> Path:
    """The newest cached snapshot of ``repo_id``; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: resolve refs/main inside the cache, no HTTP request at all.
        found = snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError and friends: all mean "not cached"
        raise ModelLayoutError(
            f"'{repo_id}' is not a local directory and not in the Hugging Face cache"
            f" ({type(exc).__name__}); download it first (`hf download {repo_id}`) or pass a"
            f" local path to {what}"
        ) from None
    return Path(found)


def check_layout(path: Path, check_transformer: bool = True) -> None:
    """Raise ModelLayoutError naming the first missing piece of the layout under ``path``."""
    for rel in REQUIRED_FILES:
        if not (path / rel).is_file():
            raise ModelLayoutError(f"model directory {path} has no {rel}; {EXPECTED}")
    for rel in REQUIRED_DIRS:
        if not (path / rel).is_dir():
            raise ModelLayoutError(f"model directory {path} has no {rel}/; {EXPECTED}")
    for folder in FROZEN_WEIGHTS:
        if not any(f.suffix in (".safetensors", ".bin") for f in (path / folder).iterdir()):
            raise ModelLayoutError(
                f"model directory {path} has no weights in {folder}/ (*.safetensors); {EXPECTED}"
            )
    _check_model_index(path)
    if check_transformer:
        if not (path / "transformer").is_dir():
            raise ModelLayoutError(f"model directory {path} has no transformer/; {EXPECTED}")
        check_transformer_folder(path / "transformer")


def check_transformer_folder(folder: Path) -> None:
    """config.json, and diffusion_pytorch_model.safetensors or a shard index whose shards are all
    present (a half-finished download leaves some out)."""
    if not (folder / "config.json").is_file():
        raise ModelLayoutError(f"{folder} has no config.json; {EXPECTED_TRANSFORMER}")
    index = folder / f"{WEIGHTS_STEM}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for shard in shards:
            if not (folder / shard).is_file():
                raise ModelLayoutError(
                    f"{folder} has no {shard} (listed in {index.name}); {EXPECTED_TRANSFORMER}"
                )
        return
    if not (folder / f"{WEIGHTS_STEM}.safetensors").is_file():
        raise ModelLayoutError(
            f"{folder} has no {WEIGHTS_STEM}.safetensors (nor a sharded {index.name});"
            f" {EXPECTED_TRANSFORMER}"
        )


def _check_model_index(path: Path) -> None:
    """Another diffusers video checkpoint has most of the same folders; its classes differ."""
    index = json.loads((path / "model_index.json").read_text())
    for component, expected in INDEX_CLASSES.items():
        entry = index.get(component) or [None, None]
        if entry[-1] != expected:
            raise ModelLayoutError(
                f"model directory {path} is not a HunyuanVideo checkpoint: model_index.json names"
                f" {component} class {entry[-1]!r}, expected {expected!r}"
            )


def transformer_config(folder: Path) -> dict[str, Any]:
    """The transformer's config.json, read before its weights are loaded."""
    return json.loads((folder / "config.json").read_text())
