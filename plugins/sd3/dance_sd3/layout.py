"""Find a Stable Diffusion 3 / 3.5 checkpoint on this machine and check it is in the diffusers
layout (what ``StableDiffusion3Pipeline.save_pretrained`` writes).

``model`` is a local directory or a Hugging Face repo id
(``stabilityai/stable-diffusion-3.5-medium``) looked up in the local Hugging Face cache only:
nothing is ever downloaded. Every problem is one :class:`~dance.errors.ModelLayoutError` line
naming the missing path and the expected layout.
"""

from __future__ import annotations

from pathlib import Path

from dance.models.model_layout import DiffusersLayout

# The folders holding a config.json (StableDiffusion3Pipeline.save_pretrained writes these).
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
LAYOUT = DiffusersLayout(
    model="Stable Diffusion 3",
    expected=(
        "expected the diffusers Stable Diffusion 3 layout: model_index.json, transformer/, vae/,"
        " text_encoder/, text_encoder_2/, text_encoder_3/, tokenizer/, tokenizer_2/,"
        " tokenizer_3/, scheduler/"
    ),
    files=(
        "model_index.json",
        *(f"{folder}/config.json" for folder in COMPONENTS),
        "scheduler/scheduler_config.json",
    ),
    # Tokenizer files vary (vocab.json + merges.txt, tokenizer.json, spiece.model).
    dirs=("tokenizer", "tokenizer_2", "tokenizer_3"),
    sharded=("transformer",),
    # The T5 encoder comes sharded in the real repositories; from_pretrained sorts that out.
    frozen=("vae", "text_encoder", "text_encoder_2", "text_encoder_3"),
    # A FLUX or SD 1.x checkpoint has some of the same folders, but other classes.
    classes={"transformer": "SD3Transformer2DModel"},
)


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path or a cached repo id."""
    return LAYOUT.resolve(model, cache_dir)
