"""Find a FLUX checkpoint on this machine and check it is in the diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``black-forest-labs/FLUX.1-dev``) that is
looked up in the local Hugging Face cache only: nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line naming the missing path and the expected layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dance.errors import ModelLayoutError

EXPECTED = (
    "expected the diffusers FLUX layout: model_index.json, transformer/, vae/, text_encoder/, "
    "text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/"
)

# Files every FLUX checkpoint has (FluxPipeline.save_pretrained writes these).
REQUIRED_FILES = (
    "model_index.json",
    "transformer/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
)
# Tokenizer folders: their files vary (tokenizer.json, vocab.json + merges.txt, spiece.model).
REQUIRED_DIRS = ("tokenizer", "tokenizer_2")
# The frozen parts' weights may come in several forms (safetensors, .bin, variants); from_pretrained
# sorts those out, here it is enough that some weight file is there.
FROZEN_WEIGHTS = ("vae", "text_encoder", "text_encoder_2")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


BUNDLED_PREFIX = "bundled:"


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped inside this package (``bundled:NAME``)."""
    root = Path(__file__).parent / "bundled"
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def resolve_model(model: str, cache_dir: str | Path | None = None) -> Path:
    """The checked checkpoint directory for ``model``: a local path, a cached repo id, or
    ``bundled:NAME`` for a checkpoint shipped inside this package."""
    if model.startswith(BUNDLED_PREFIX):
        name = model[len(BUNDLED_PREFIX) :]
        path = Path(__file__).parent / "bundled" / name
        if not (path / "model_index.json").is_file():
            known = ", ".join(bundled_models()) or "none"
            raise ModelLayoutError(f"no bundled model '{name}' (bundled: {known}).")
        check_layout(path)
        return path
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
    """The newest cached snapshot of ``repo_id``; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: resolve refs/main inside the cache, no HTTP request at all.
        found = snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except Exception as exc:  # LocalEntryNotFoundError and friends: all mean "not cached"
        raise ModelLayoutError(
            f"model '{repo_id}' is not a local directory and not in the Hugging Face cache"
            f" ({type(exc).__name__}); download it first (`hf download {repo_id}`) or pass a"
            " local path to a diffusers FLUX checkpoint"
        ) from None
    return Path(found)


def check_layout(path: Path) -> None:
    """Raise ModelLayoutError naming the first missing piece of the FLUX layout under ``path``."""
    for rel in REQUIRED_FILES:
        if not (path / rel).is_file():
            raise ModelLayoutError(f"model directory {path} has no {rel}; {EXPECTED}")
    for rel in REQUIRED_DIRS:
        if not (path / rel).is_dir():
            raise ModelLayoutError(f"model directory {path} has no {rel}/; {EXPECTED}")
    _check_transformer_weights(path)
    for folder in FROZEN_WEIGHTS:
        if not any(f.suffix in (".safetensors", ".bin") for f in (path / folder).iterdir()):
            raise ModelLayoutError(
                f"model directory {path} has no weights in {folder}/ (*.safetensors); {EXPECTED}"
            )
    _check_model_index(path)


def _check_transformer_weights(path: Path) -> None:
    """transformer/ holds diffusion_pytorch_model.safetensors, or a shard index whose shards are
    all present (a half-finished download leaves some out)."""
    stem = "transformer/diffusion_pytorch_model"
    index = path / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for shard in shards:
            if not (index.parent / shard).is_file():
                raise ModelLayoutError(
                    f"model directory {path} has no transformer/{shard} (listed in {index.name});"
                    f" {EXPECTED}"
                )
        return
    if not (path / f"{stem}.safetensors").is_file():
        raise ModelLayoutError(
            f"model directory {path} has no {stem}.safetensors (nor a sharded"
            f" {index.name}); {EXPECTED}"
        )


def _check_model_index(path: Path) -> None:
    """A diffusers checkpoint of another model (SD3, say) has most of the same folders."""
    index = json.loads((path / "model_index.json").read_text())
    entry = index.get("transformer") or [None, None]
    if entry[-1] != "FluxTransformer2DModel":
        raise ModelLayoutError(
            f"model directory {path} is not a FLUX checkpoint: model_index.json names transformer"
            f" class {entry[-1]!r}, expected 'FluxTransformer2DModel'"
        )
