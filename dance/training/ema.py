"""Exponential moving average of the trained parameters.

Under FSDP2 the parameters are DTensor shards, and so is each shadow (a clone of its parameter):
every rank averages its own shard, and checkpoints save the shadows sharded with the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the parameters (to save or evaluate them)."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(saved, self.params, strict=True):
                    p.copy_(v)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)
