"""Prompt files, and prompt sources drawn in seeded, shuffled epochs with a resumable position.

Two formats, told apart by the file name:

* ``*.txt`` (or any other name): one prompt per non-empty line.
* ``*.jsonl``: one JSON object per non-empty line, ``{"prompt": "..."}`` for a text-only prompt,
  ``{"prompt": "...", "image": "cat.png"}`` for a prompt conditioned on an image (image-to-video,
  or the source image of an edit),
  or ``{"prompt": "...", "video": "clip.mp4"}`` to condition on the first frame of a video.
  Relative paths are taken from the folder of the JSONL file.

Conditioning images are checked when the file is read (each one is opened and decoded once, so a
missing or corrupt file stops the run before training starts, naming the file and line) and
decoded again each time a prompt is drawn, so a large prompt set costs no memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from dance.errors import UsageError, did_you_mean
from dance.files import check_input_file, decode_text, first_line, read_text
from dance.interfaces import Prompt

JSONL_KEYS = ("prompt", "image", "video")


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of a prompt file: its text and where its conditioning image comes from."""

    text: str
    # An image file, or a video file whose first frame is the conditioning image; None: text only.
    source: Path | None = None
    source_kind: Literal["image", "video"] | None = None
    # "file:line" of the entry, for error messages.
    origin: str = ""

    def load(self) -> Prompt:
        """The prompt with its conditioning image decoded: ``[3, H, W]`` float32 in [0, 1]."""
        if self.source is None:
            return Prompt(self.text)
        return Prompt(self.text, _read_condition(self.source, self.source_kind, self.origin))


def _read_condition(path: Path, kind: str | None, origin: str, full: bool = True) -> torch.Tensor:
    """Decode a conditioning file as ``[3, H, W]`` float32 in [0, 1].

    ``full=False`` only checks that the file decodes (a JPEG then decodes at a reduced scale) and
    returns an empty tensor. An image is turned upright by its EXIF orientation, as diffusers'
    ``load_image`` does, so it matches what an image viewer shows.
    """
    check_input_file(
        path, f"{origin}: {kind} file", f"an {kind} file" if kind == "image" else "a video file"
    )
    try:
        if kind == "video":
            from dance.video.mp4 import read_first_frame

            return read_first_frame(path)
        import numpy as np
        from PIL import Image, ImageOps

        with Image.open(path) as image:
            if not full:
                image.draft("RGB", (64, 64))  # a no-op for formats without draft decoding
            image.load()  # decode now, so that a truncated file fails here
            if not full:
                return torch.empty(0)
            upright = ImageOps.exif_transpose(image).convert("RGB")
            pixels = torch.from_numpy(np.array(upright))  # [H, W, 3] uint8
        return pixels.permute(2, 0, 1).float() / 255
    except Exception as exc:  # PIL and PyAV raise many types for a corrupt file
        raise UsageError(f"{origin}: cannot read {kind} {path} ({first_line(exc)}).") from exc


def _parse_jsonl(text: str, name: str, folder: Path | None) -> list[PromptEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{origin}: invalid JSON ({exc.msg} at column {exc.colno}).") from None
        if not isinstance(record, dict):
            raise UsageError(f'{origin}: expected a JSON object like {{"prompt": "..."}}.')
        for key in record:
            if key not in JSONL_KEYS:
                raise UsageError(
                    f"{origin}: unknown key '{key}' (known: {', '.join(JSONL_KEYS)})."
                    + did_you_mean(key, JSONL_KEYS)
                )
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f'{origin}: missing "prompt" (a non-empty string).')
        if "image" in record and "video" in record:
            raise UsageError(f'{origin}: give either "image" or "video", not both.')
        kind = "image" if "image" in record else "video" if "video" in record else None
        if kind is None:
            entries.append(PromptEntry(prompt.strip(), origin=origin))
            continue
        value = record[kind]
        if not isinstance(value, str) or not value:
            raise UsageError(f'{origin}: "{kind}" must be a file path.')
        path = Path(value).expanduser()
        if not path.is_absolute():
            if folder is None:
                raise UsageError(
                    f"{origin}: cannot resolve the relative path {value} inside a zipped "
                    "package; give an absolute path."
                )
            path = folder / path
        _read_condition(path, kind, origin, full=False)  # a bad file stops the run here
        entries.append(PromptEntry(prompt.strip(), path, kind, origin))
    return entries


def read_prompts(path: str) -> list[PromptEntry]:
    """Read a prompt file (see the module docstring for the formats).

    ``path`` is a file, ``pkg:PACKAGE/FILE`` for a prompt list shipped inside an installed package
    (relative media paths are then taken from that file's folder), or empty for dance's bundled
    list.
    """
    folder: Path | None
    if not path:
        name = "prompts.txt"
        text = (resources.files("dance") / "data" / "prompts.txt").read_text(encoding="utf-8")
        folder = None
    elif path.startswith("pkg:"):
        package, _, name = path[4:].partition("/")
        try:
            resource = resources.files(package) / name
        except ModuleNotFoundError:
            raise UsageError(f"prompt list {path}: no installed package '{package}'.") from None
        if not name or not resource.is_file():
            raise UsageError(f"prompt list {path}: package '{package}' has no file '{name}'.")
        text = decode_text(resource.read_bytes(), f"prompt list {path}")
        folder = resource.parent if isinstance(resource, Path) else None
        name = path
    else:
        p = Path(path)
        expected = (
            "a .jsonl file of prompts"
            if p.suffix == ".jsonl"
            else "a text file with one prompt per line"
        )
        text = read_text(p, "prompt file", expected)
        folder, name = p.parent, str(p)
    if name.endswith(".jsonl"):
        entries = _parse_jsonl(text, name, folder)
    else:
        entries = [PromptEntry(line.strip()) for line in text.splitlines() if line.strip()]
    if not entries:
        raise UsageError(f"prompt file {path} holds no prompts (expected one prompt per line).")
    return entries


def load_prompts(path: str) -> list[Prompt]:
    """:func:`read_prompts` with every conditioning image decoded (for small sets: evaluation,
    ``dance sample``)."""
    return [entry.load() for entry in read_prompts(path)]


class PromptSource:
    """Draws prompts in shuffled epochs; the same seed gives the same sequence on every rank."""

    def __init__(self, prompts: Sequence[str | PromptEntry], seed: int) -> None:
        self.prompts = [p if isinstance(p, PromptEntry) else PromptEntry(p) for p in prompts]
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next(self, n: int) -> list[Prompt]:
        """The next ``n`` prompts, their conditioning images decoded."""
        out = []
        for _ in range(n):
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffle(self.epoch)
            out.append(self.prompts[self._order[self.position]].load())
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._shuffle(self.epoch)
