"""The prompt-embedding cache of diffusers policies: each distinct prompt (or image) is encoded
once by the frozen encoders, least recently used entries dropped beyond a size."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch


class EmbeddingCache(OrderedDict):
    """Encoder outputs per key, most recently used last.

    :meth:`lookup` returns the stacked embeddings of a batch of items, encoding in one call only
    the distinct items it does not hold. Disabled (``enabled=False``) it still encodes each
    distinct item of a batch once, but keeps nothing.
    """

    def __init__(self, size: int, enabled: bool = True) -> None:
        super().__init__()
        self.size = size
        self.enabled = enabled

    def lookup(
        self,
        items: Sequence[Any],
        encode: Callable[[list[Any]], Sequence[torch.Tensor]],
        key: Callable[[Any], Hashable] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """``encode(missing items)`` gives tensors ``[N, ...]`` (one per output: embeddings,
        mask, pooled...); returns each output stacked over ``items`` as ``[B, ...]``. ``key``
        maps an item to its cache key (default: the item, e.g. the prompt text)."""
        keys = [key(item) if key else item for item in items]
        todo: dict[Hashable, Any] = {}
        for k, item in zip(keys, items, strict=True):
            if k not in todo and not (self.enabled and k in self):
                todo[k] = item
        fresh: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        if todo:
            outputs = encode(list(todo.values()))
            fresh = {k: tuple(out[i] for out in outputs) for i, k in enumerate(todo)}
        rows = []
        for k in keys:
            if k in fresh:
                rows.append(fresh[k])
            else:
                self.move_to_end(k)
                rows.append(self[k])
        if self.enabled:
            for k, row in fresh.items():
                # Own copies: a row view would keep its whole encoder batch alive in the cache.
                self[k] = tuple(t.clone() for t in row)
            while len(self) > self.size:
                self.popitem(last=False)
        return tuple(torch.stack(column) for column in zip(*rows, strict=True))


def image_key(image: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """Shape and content hash of a conditioning image ``[C, H, W]``: an image-latent cache key."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    return tuple(data.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest()
