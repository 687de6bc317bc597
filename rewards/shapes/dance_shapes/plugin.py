"""Entry point of the ``dance-shapes`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_shapes.reward import ShapesReward


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(ShapesReward)
