"""Frozen parts (text encoders, VAE) kept in CPU memory and moved to the GPU only while they run.

A policy's frozen encoders and decoder are idle during most of an iteration (prompts are cached,
decoding happens once per rollout), yet on a GPU they would hold memory the whole time: FLUX's T5
encoder alone is 9.5 GB in bf16. With offloading on, they live in CPU memory and visit the GPU for
the duration of a ``with offload.on_device(module):`` block. On a CPU run there is nothing to gain,
and offloading is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


class FrozenOffload:
    """Where frozen modules live between uses, and the context that brings them to the device."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        if enabled and not self.enabled:
            logger.info("policy.offload_frozen has no effect on %s", device)

    @property
    def home(self) -> torch.device:
        """The device frozen modules are loaded to."""
        return torch.device("cpu") if self.enabled else self.device

    @contextlib.contextmanager
    def on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Run ``modules`` on the device; with offloading, move them there for the block and back
        to CPU memory after it, releasing the cached GPU blocks they used."""
        if not self.enabled:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            torch.cuda.empty_cache()
