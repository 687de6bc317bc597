"""Find a Qwen-Image checkpoint on this machine and check it is in the diffusers layout (what
``QwenImagePipeline.save_pretrained`` writes).

``model`` is a local directory or a Hugging Face repo id (``Qwen/Qwen-Image``) looked up in the
local Hugging Face cache only: nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line naming the missing path and the expected layout.
"""

from __future__ import annotations

from pathlib import Path

from dance.models.model_layout import DiffusersLayout

# The folders holding a config.json (QwenImagePipeline.save_pretrained writes these).
COMPONENTS = ("transformer", "vae", "text_encoder")
LAYOUT = DiffusersLayout(
    model="Qwen-Image",
    expected=(
        "expected the diffusers Qwen-Image layout: model_index.json, transformer/, vae/,"
        " text_encoder/, tokenizer/, scheduler/"
    ),
    files=(
        "model_index.json",
        *(f"{folder}/config.json" for folder in COMPONENTS),
        "scheduler/scheduler_config.json",
    ),
    dirs=("tokenizer",),
    # The transformer and the Qwen2.5-VL encoder come sharded in the real repository.
    sharded=("transformer",),
    frozen=("vae", "text_encoder"),
    # Other pipelines share folder names, not these classes.
    classes={"transformer": "QwenImageTransformer2DModel", "vae": "AutoencoderKLQwenImage"},
)


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path or a cached repo id."""
    return LAYOUT.resolve(model, cache_dir)
