"""Find a HunyuanVideo-family checkpoint on this machine and check its diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``hunyuanvideo-community/HunyuanVideo``)
looked up in the local Hugging Face cache only: nothing is ever downloaded. A separate transformer
(SkyReels-V1 ships only its transformer, ``Skywork/SkyReels-V1-Hunyuan-I2V``) is found the same
way. Every problem is one :class:`~dance.errors.ModelLayoutError` line naming the missing path and
the expected layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.errors import ModelLayoutError
from dance.files import read_json
from dance.models.model_layout import (
    DiffusersLayout,
    check_diffusers_weights,
    check_dirs,
    find_checkpoint,
)

LAYOUT = DiffusersLayout(
    model="HunyuanVideo",
    expected=(
        "expected the diffusers HunyuanVideo layout (hunyuanvideo-community/HunyuanVideo): "
        "model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
        "tokenizer_2/, scheduler/"
    ),
    # Files every checkpoint has (HunyuanVideoPipeline.save_pretrained writes these); the
    # transformer is checked apart, as it may come from elsewhere.
    files=(
        "model_index.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "scheduler/scheduler_config.json",
    ),
    # Tokenizer folders: their files vary (tokenizer.json, vocab.json + merges.txt).
    dirs=("tokenizer", "tokenizer_2"),
    # Frozen parts: any weight file will do here, from_pretrained sorts out the format.
    frozen=("vae", "text_encoder", "text_encoder_2"),
    # Entries that tell this family apart from other video checkpoints (the official
    # HunyuanVideo-I2V, say, has a LLaVA text encoder and an image processor).
    classes={
        "transformer": "HunyuanVideoTransformer3DModel",
        "vae": "AutoencoderKLHunyuanVideo",
        "text_encoder": "LlamaModel",
        "text_encoder_2": "CLIPTextModel",
    },
)
EXPECTED_TRANSFORMER = (
    "expected a diffusers HunyuanVideoTransformer3DModel folder: config.json and "
    "diffusion_pytorch_model.safetensors (or a shard index with its shards)"
)


def resolve_model(model: str, check_transformer: bool = True) -> Path:
    """The checked checkpoint directory for ``model`` (a local path or a cached repo id).

    ``check_transformer=False`` when the transformer comes from elsewhere (policy.transformer)."""
    path = find_checkpoint(model, LAYOUT.expected, "a diffusers HunyuanVideo checkpoint")
    check_layout(path, check_transformer)
    return path


def resolve_transformer(transformer: str) -> Path:
    """The checked folder of a separately given transformer (a local path or a cached repo id)."""
    path = find_checkpoint(transformer, EXPECTED_TRANSFORMER, "a transformer folder", "transformer")
    check_transformer_folder(path)
    return path


def check_layout(path: Path, check_transformer: bool = True) -> None:
    """Raise ModelLayoutError naming the first missing piece of the layout under ``path``."""
    LAYOUT.check(path)
    if check_transformer:
        check_dirs(path, ["transformer"], LAYOUT.expected)
        check_transformer_folder(path / "transformer")


def check_transformer_folder(folder: Path) -> None:
    """config.json, and diffusion_pytorch_model.safetensors or a shard index whose shards are all
    present (a half-finished download leaves some out)."""
    if not (folder / "config.json").is_file():
        raise ModelLayoutError(f"{folder} has no config.json; {EXPECTED_TRANSFORMER}")
    check_diffusers_weights(folder, "", EXPECTED_TRANSFORMER, where=str(folder))


def transformer_config(folder: Path) -> dict[str, Any]:
    """The transformer's config.json, read before its weights are loaded."""
    return read_json(folder / "config.json", "transformer config")
