"""Finding a diffusers checkpoint on this machine and checking its files, for policy plugins.

A checkpoint is a local directory or a Hugging Face repo id looked up in the local Hugging Face
cache only (``local_files_only``): nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line that names the missing path and ends with the
plugin's description of the layout it expects (``expected``), so the user knows what to fix.

A plugin's own layout module says which components, files and classes its model has: as a
:class:`DiffusersLayout`, or by calling the ``check_*`` helpers in the order it wants the problems
reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dance.errors import ModelLayoutError

if TYPE_CHECKING:  # only for annotations: the layout checks run without importing torch
    import torch

# What the Hub accepts as a repo id: "org/name", neither part starting with "." or "~".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def find_checkpoint(
    name: str,
    expected: str,
    what: str,
    kind: str = "model",
    cache_dir: str | Path | None = None,
) -> Path:
    """The directory ``name`` stands for: a local directory, or the newest cached snapshot of a
    Hugging Face repo id. Its contents are not checked here.

    ``kind`` starts the messages ("model directory ... does not exist"); ``what`` is what a local
    path should point at ("a diffusers FLUX checkpoint")."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLayoutError(f"{kind} path {path} is a file, not a directory; {expected}")
    if not _REPO_ID.match(name) or name.startswith((".", "~")):
        raise ModelLayoutError(f"{kind} directory {path} does not exist; {expected}")
    return cached_snapshot(name, what, kind, cache_dir)


def cached_snapshot(
    repo_id: str, what: str, kind: str = "model", cache_dir: str | Path | None = None
) -> Path:
    """The snapshot of ``repo_id`` that the cache's refs/main points at; never touches the
    network."""
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: resolve refs/main inside the cache, no HTTP request at all.
        found = snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except Exception as exc:  # LocalEntryNotFoundError and friends: all mean "not cached"
        raise ModelLayoutError(
            f"{kind} '{repo_id}' is not a local directory and not in the Hugging Face cache"
            f" ({type(exc).__name__}); download it first (`hf download {repo_id}`) or pass a"
            f" local path to {what}"
        ) from None
    return Path(found)


def check_files(path: Path, files: Iterable[str], expected: str) -> None:
    """Raise naming the first of ``files`` (relative to ``path``) that is missing."""
    for rel in files:
        if not (path / rel).is_file():
            raise ModelLayoutError(f"model directory {path} has no {rel}; {expected}")


def check_dirs(path: Path, dirs: Iterable[str], expected: str) -> None:
    """Raise naming the first of ``dirs`` (relative to ``path``) that is missing."""
    for rel in dirs:
        if not (path / rel).is_dir():
            raise ModelLayoutError(f"model directory {path} has no {rel}/; {expected}")


def check_some_weights(path: Path, folders: Iterable[str], expected: str) -> None:
    """Raise naming the first of ``folders`` that holds no weight file at all.

    Enough for frozen parts whose weights come in several forms (safetensors, .bin, variants):
    from_pretrained sorts those out."""
    for folder in folders:
        if not any(f.suffix in (".safetensors", ".bin") for f in (path / folder).iterdir()):
            raise ModelLayoutError(
                f"model directory {path} has no weights in {folder}/ (*.safetensors); {expected}"
            )


def shard_names(index: Path) -> list[str]:
    """The distinct weight files a sharded checkpoint's ``*.index.json`` lists, sorted."""
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))


def check_shards(root: Path, index: Path, expected: str, where: str | None = None) -> None:
    """Raise naming the first shard listed in ``index`` that is not next to it (a half-finished
    download leaves some out). Shards are named relative to ``root``; ``where`` starts the
    message (default "model directory ROOT")."""
    where = where or f"model directory {root}"
    for shard in shard_names(index):
        if not (index.parent / shard).is_file():
            rel = (index.parent / shard).relative_to(root)
            raise ModelLayoutError(f"{where} has no {rel} (listed in {index.name}); {expected}")


def check_diffusers_weights(
    root: Path,
    folder: str,
    expected: str,
    where: str | None = None,
    stem: str = "diffusion_pytorch_model",
) -> None:
    """``root/folder`` holds ``STEM.safetensors``, or ``STEM.safetensors.index.json`` and every
    shard it lists (the index wins when both are there, as in diffusers' from_pretrained)."""
    where = where or f"model directory {root}"
    weights = root / folder / f"{stem}.safetensors"
    index = weights.with_name(f"{weights.name}.index.json")
    if index.is_file():
        check_shards(root, index, expected, where)
        return
    if not weights.is_file():
        raise ModelLayoutError(
            f"{where} has no {weights.relative_to(root)} (nor a sharded {index.name}); {expected}"
        )


def check_index_classes(path: Path, classes: Mapping[str, str], model: str) -> dict[str, Any]:
    """Read ``model_index.json`` and raise unless it names the ``classes`` ({component: class
    name}); another model's checkpoint often has the same folders, but other classes. Returns the
    index."""
    index = json.loads((path / "model_index.json").read_text())
    for component, expected in classes.items():
        entry = index.get(component) or [None, None]
        if entry[-1] != expected:
            raise ModelLayoutError(
                f"model directory {path} is not a {model} checkpoint: model_index.json names"
                f" {component} class {entry[-1]!r}, expected {expected!r}"
            )
    return index


@dataclass(frozen=True)
class DiffusersLayout:
    """The files a diffusers checkpoint of one model must have, checked in this order (the first
    problem is reported): ``files``; ``dirs``; ``sharded`` folders, each with
    ``diffusion_pytorch_model.safetensors`` or its complete shards; ``frozen`` folders, each with
    some weight file; the component ``classes`` that ``model_index.json`` names.

    ``model`` names the model in messages ("FLUX"); ``expected`` ends every message."""

    model: str
    expected: str
    files: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    sharded: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    classes: Mapping[str, str] = field(default_factory=dict)

    def check(self, path: Path) -> None:
        """Raise ModelLayoutError naming the first missing or foreign piece under ``path``."""
        check_files(path, self.files, self.expected)
        check_dirs(path, self.dirs, self.expected)
        for folder in self.sharded:
            check_diffusers_weights(path, folder, self.expected)
        check_some_weights(path, self.frozen, self.expected)
        if self.classes:
            check_index_classes(path, self.classes, self.model)

    def resolve(self, name: str, cache_dir: str | Path | None = None) -> Path:
        """The checked directory of checkpoint ``name`` (a local path or a cached repo id)."""
        path = find_checkpoint(
            name, self.expected, f"a diffusers {self.model} checkpoint", cache_dir=cache_dir
        )
        self.check(path)
        return path


def transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The load-dtype keyword of transformers' ``from_pretrained``: transformers 5 names it
    ``dtype``, 4.x ``torch_dtype``."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
