"""Entry point of the ``dance-binary`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_binary.reward import BinaryReward


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(BinaryReward)
