"""Entry point of the ``dance-imagereward`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_imagereward.reward import ImageReward


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(ImageReward)
