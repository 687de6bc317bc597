"""Finding a diffusers checkpoint on this machine and checking its files, for policy plugins.

A checkpoint is a local directory or a Hugging Face repo id looked up in the local Hugging Face
cache only (``local_files_only``): nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line that names the missing path and ends with the
plugin's description of the layout it expects (``expected``), so the user knows what to fix.

A plugin's own layout module says which components, files and classes its model has: as a
:class:`DiffusersLayout`, or by calling the ``check_*`` helpers in the order it wants the problems
reported.

Components are then loaded with :func:`load_pretrained` (models) and :func:`load_tokenizer`, which
refuse to run on garbage: a damaged file (a JSON config that does not parse, a truncated or
random safetensors file) is a :class:`~dance.errors.FileFault` naming it; so are weights missing
from the files (from_pretrained would leave them random) and weights that are NaN or inf; a
tokenizer folder without a vocabulary (transformers would build a default tokenizer that maps
every word to <unk>) is a ModelLayoutError naming the folder.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dance.errors import FileFault, ModelLayoutError, UsageError
from dance.files import check_finite, first_line, read_json

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
    weight_map = read_json(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise FileFault(f"shard index {index} has no weight_map table; the file is corrupt.")
    return sorted(set(weight_map.values()))


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
    index = read_json(path / "model_index.json", "model index")
    if not isinstance(index, dict):
        raise FileFault(f"model index {path / 'model_index.json'} is not a JSON object (corrupt).")
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


# Files that hold a tokenizer's vocabulary, in the formats transformers reads; a folder with none
# of them loads as a default tokenizer that maps every word to <unk>.
TOKENIZER_VOCABULARY = (
    "tokenizer.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
# Common words every real tokenizer knows; a tokenizer that knows none of them is garbage.
_PROBE_WORDS = ("a", "photo", "of", "cat")


def check_component_files(folder: Path) -> None:
    """Raise a FileFault naming the first file of a component folder that is damaged: a JSON file
    that does not parse, or a safetensors file whose header is garbage or whose data is cut
    short. Reads only headers, not the weights."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.json")):
        read_json(file, "config file")
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types
            raise FileFault(
                f"weights file {file} is corrupt or truncated ({first_line(exc)}); restore it"
                " from the original checkpoint."
            ) from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(before)


def load_pretrained(loader: Any, folder: Path, **kwargs: Any) -> Any:
    """``loader.from_pretrained(folder)`` for one model component of a checkpoint (a transformer,
    a text encoder, a VAE), from local files only, refusing what would run on garbage: a damaged
    file (named), weights missing from the files (which from_pretrained would fill with random
    values) and weights that are NaN or inf. Every problem is one line naming the path."""
    folder = Path(folder)
    check_component_files(folder)
    try:
        # transformers prints its own table of missing weights; they are refused below instead.
        with _quiet_transformers():
            model, info = loader.from_pretrained(
                folder, local_files_only=True, output_loading_info=True, **kwargs
            )
    except UsageError:
        raise
    except Exception as exc:  # diffusers and transformers raise many types for a bad folder
        raise FileFault(f"cannot load {folder}: {first_line(exc)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise FileFault(
            f"{folder} is incomplete: its weight files lack {len(missing)} weights (e.g."
            f" {missing[0]}), which would be left random; restore the folder from the original"
            " checkpoint."
        )
    check_finite(model.state_dict().items(), folder)
    return model


def load_tokenizer(loader: Any, folder: Path, **kwargs: Any) -> Any:
    """``loader.from_pretrained(folder)`` for a tokenizer folder, from local files only, refusing
    a folder without a vocabulary and a tokenizer that knows no common word (transformers
    otherwise builds a default tokenizer that turns every prompt into <unk>)."""
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / n).is_file() for n in TOKENIZER_VOCABULARY):
        raise ModelLayoutError(
            f"tokenizer folder {folder} is empty or incomplete: it has none of"
            f" {', '.join(TOKENIZER_VOCABULARY)}; copy the folder from the original checkpoint."
        )
    check_component_files(folder)
    try:
        tokenizer = loader.from_pretrained(folder, local_files_only=True, **kwargs)
    except UsageError:
        raise
    except Exception as exc:  # tokenizers and transformers raise many types for a bad file
        raise FileFault(f"cannot load the tokenizer in {folder}: {first_line(exc)}") from None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        known = [
            w
            for w in _PROBE_WORDS
            if unk not in tokenizer(w, add_special_tokens=False)["input_ids"]
        ]
        if not known:
            raise FileFault(
                f"the tokenizer in {folder} maps every common word to its unknown token; its"
                " vocabulary is damaged: restore the folder from the original checkpoint."
            )
    return tokenizer


def transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The load-dtype keyword of transformers' ``from_pretrained``: transformers 5 names it
    ``dtype``, 4.x ``torch_dtype``."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
