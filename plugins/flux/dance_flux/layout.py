"""Find a FLUX checkpoint on this machine and check it is in the diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``black-forest-labs/FLUX.1-dev``) that is
looked up in the local Hugging Face cache only: nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line naming the missing path and the expected layout.
"""

from __future__ import annotations

from pathlib import Path

from dance.errors import ModelLayoutError
from dance.models.model_layout import DiffusersLayout

LAYOUT = DiffusersLayout(
    model="FLUX",
    expected=(
        "expected the diffusers FLUX layout: model_index.json, transformer/, vae/, text_encoder/, "
        "text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/"
    ),
    # Files every FLUX checkpoint has (FluxPipeline.save_pretrained writes these).
    files=(
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "scheduler/scheduler_config.json",
    ),
    # Tokenizer folders: their files vary (tokenizer.json, vocab.json + merges.txt, spiece.model).
    dirs=("tokenizer", "tokenizer_2"),
    # The transformer's weights: one safetensors file or a complete set of shards.
    sharded=("transformer",),
    # The frozen parts' weights may come in several forms (safetensors, .bin, variants);
    # from_pretrained sorts those out, here it is enough that some weight file is there.
    frozen=("vae", "text_encoder", "text_encoder_2"),
    # A diffusers checkpoint of another model (SD3, say) has most of the same folders.
    classes={"transformer": "FluxTransformer2DModel"},
)
BUNDLED_PREFIX = "bundled:"


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped inside this package (``bundled:NAME``)."""
    root = Path(__file__).parent / "bundled"
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path, a cached repo id, or
    ``bundled:NAME`` for a checkpoint shipped inside this package."""
    if not model.startswith(BUNDLED_PREFIX):
        return LAYOUT.resolve(model, cache_dir)
    name = model[len(BUNDLED_PREFIX) :]
    path = Path(__file__).parent / "bundled" / name
    if not (path / "model_index.json").is_file():
        known = ", ".join(bundled_models()) or "none"
        raise ModelLayoutError(f"no bundled model '{name}' (bundled: {known}).")
    check_layout(path)
    return path


def check_layout(path: Path) -> None:
    """Raise ModelLayoutError naming the first missing piece of the FLUX layout under ``path``."""
    LAYOUT.check(path)
