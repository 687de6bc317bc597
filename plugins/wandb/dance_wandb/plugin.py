"""Entry point of the ``dance-wandb`` distribution. Light: ``wandb`` itself is imported only when
a run starts the logger, so ``dance plugins`` and runs without it do not pay for the import."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_wandb.logger import WandbLogger


@dance.hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(WandbLogger)
