"""Entry point of the Stable Diffusion plugin: registers the ``sd`` policy with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_sd.policy import SDPolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(SDPolicy)
