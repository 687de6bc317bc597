"""Prompt sources: a list of prompts drawn in seeded, shuffled epochs, with a resumable position."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from dance.errors import UsageError
from dance.interfaces import Prompt


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line. ``path`` is a file, ``pkg:PACKAGE/FILE`` for a prompt list
    shipped inside an installed package, or empty for dance's bundled list."""
    if not path:
        text = (resources.files("dance") / "data" / "prompts.txt").read_text()
    elif path.startswith("pkg:"):
        package, _, name = path[4:].partition("/")
        try:
            resource = resources.files(package) / name
        except ModuleNotFoundError:
            raise UsageError(f"prompt list {path}: no installed package '{package}'.") from None
        if not name or not resource.is_file():
            raise UsageError(f"prompt list {path}: package '{package}' has no file '{name}'.")
        text = resource.read_text()
    else:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"prompt file {p} does not exist (expected one prompt per line).")
        text = p.read_text()
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"prompt file {path} holds no prompts (expected one prompt per line).")
    return prompts


class PromptSource:
    """Draws prompts in shuffled epochs; the same seed gives the same sequence on every rank."""

    def __init__(self, prompts: list[str], seed: int) -> None:
        self.prompts = prompts
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next(self, n: int) -> list[Prompt]:
        out = []
        for _ in range(n):
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffle(self.epoch)
            out.append(Prompt(self.prompts[self._order[self.position]]))
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._shuffle(self.epoch)
